"""What differs between Postgres and SQLite in the statements the store builds.

A group commit's writes are described as :class:`Write` values (a table and its
rows, column by column) and handed to :func:`write_all`:

- On **Postgres** they become *one* statement: each write is a data-modifying
  CTE whose rows travel as one array per column (``unnest``), and the NOTIFY of
  the touched runs rides along. A statement per table — or worse, an
  ``executemany``, which Postgres plans and runs once per row — made the round
  trips, not the work, the cost of a commit.
- On **SQLite** (in-process, no round trips) each write is an ``executemany``
  of one plain SQL statement.

Statements are built once per shape and cached: SQLAlchemy's dialect-specific
insert (for ON CONFLICT) has no cache key, so it was compiled on every call.

On Postgres the writer hands :func:`write_all` its asyncpg connection too, and the
statement goes straight to it (positional ``$n`` parameters, asyncpg's own prepared
statement cache): SQLAlchemy's execution machinery around a text statement cost
more CPU than the statement itself, on the writer's path for every commit. Errors
are raised as SQLAlchemy's (``IntegrityError``, ``DBAPIError`` with the asyncpg
error as ``orig``), as the store expects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

if TYPE_CHECKING:
    import asyncpg

GUARD_FAILED = "22012"
"""SQLSTATE (division_by_zero) of a Postgres statement whose all-or-nothing write missed a row."""


@dataclass(frozen=True, slots=True)
class Write:
    """Rows to write to one table, given column by column.

    Attributes:
        table: The table.
        columns: Column name → one value per row (all lists the same length).
        update: Insert, and on a primary-key conflict overwrite these columns.
        returning: Insert, skip rows that conflict with any unique constraint, and
            return this column of the rows inserted. With ``match``: return one
            value per row updated.
        match: Update instead of insert, each row where every (table column, value
            column) pair is equal; value columns that are not table columns (say
            ``expected_last_seq`` for ``last_seq``) only match and are not set.
    """

    table: Table
    columns: dict[str, list[Any]]
    update: tuple[str, ...] = ()
    returning: str = ""
    match: tuple[tuple[str, str], ...] = ()
    all_or_nothing: bool = False
    """With ``match`` or ``returning`` on Postgres: fail the whole statement
    (:data:`GUARD_FAILED`) unless every row matched (or was inserted), so a guarded
    write needs no transaction around it."""
    shape: tuple[object, ...] = field(init=False)

    def __post_init__(self) -> None:
        shape = (
            self.table,
            tuple(self.columns),
            self.update,
            self.returning,
            self.match,
            self.all_or_nothing,
        )
        object.__setattr__(self, "shape", shape)

    @property
    def rows(self) -> int:
        """How many rows the write holds."""
        return len(next(iter(self.columns.values()), []))


# -- Postgres: one statement ------------------------------------------------------


def _pg_type(table: Table, name: str) -> str:
    return str(table.c[name].type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


def _set_columns(names: tuple[str, ...], match: tuple[tuple[str, str], ...]) -> list[str]:
    matched = {value for _, value in match}
    return [n for n in names if n not in matched]


def _pg_sql(shape: tuple[Any, ...], prefix: str) -> str:
    table, names, update, returning, match, _ = shape
    types = {value: column for column, value in match}
    arrays = ", ".join(f"CAST(:{prefix}{n} AS {_pg_type(table, types.get(n, n))}[])" for n in names)
    rows = f"SELECT * FROM unnest({arrays}) AS u({', '.join(names)})"
    if match:
        sets = ", ".join(f"{n} = u.{n}" for n in _set_columns(names, match))
        where = " AND ".join(f"{table.name}.{c} = u.{v}" for c, v in match)
        sql = f"UPDATE {table.name} SET {sets} FROM ({rows}) AS u WHERE {where}"
        return sql + (f" RETURNING {table.name}.{returning}" if returning else "")
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) {rows}"
    if update:
        keys = ", ".join(c.name for c in table.primary_key.columns)
        sets = ", ".join(f"{n} = EXCLUDED.{n}" for n in update)
        sql += f" ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    elif returning:
        sql += " ON CONFLICT DO NOTHING"
    if returning:
        sql += f" RETURNING {returning}"
    return sql


def _pg_text(shapes: tuple[tuple[Any, ...], ...], notify: bool) -> str:
    # Every data-modifying CTE runs whether or not it is referenced; the NOTIFY is a
    # plain SELECT, so the final SELECT must reference it for it to run.
    ctes = [f"w{i} AS ({_pg_sql(shape, f'w{i}_')})" for i, shape in enumerate(shapes)]
    outputs = [
        f"(SELECT array_agg({shape[3]}) FROM w{i})" for i, shape in enumerate(shapes) if shape[3]
    ]
    # An assertion in plain SQL: dividing by zero when a guarded write missed a row
    # aborts the statement, and with it every write in it (GUARD_FAILED).
    outputs += [
        f"(SELECT 1 / (count(*) = cardinality(:w{i}_{shape[1][0]}))::int FROM w{i})"
        for i, shape in enumerate(shapes)
        if shape[5]
    ]
    if notify:
        ctes.append(
            "notified AS (SELECT pg_notify(:notify_channel, p)"
            " FROM unnest(CAST(:notify_payloads AS text[])) AS p)"
        )
        outputs.append("(SELECT count(*) FROM notified)")
    return f"WITH {', '.join(ctes)} SELECT {', '.join(outputs) or '1'}"


@cache
def _pg_statement(shapes: tuple[tuple[Any, ...], ...], notify: bool) -> TextClause:
    return text(_pg_text(shapes, notify))


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@cache
def _pg_positional(shapes: tuple[tuple[Any, ...], ...], notify: bool) -> tuple[str, list[str]]:
    """The statement with ``$n`` placeholders, and the parameter name of each ``n``."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _NAMED.sub(number, _pg_text(shapes, notify)), names


async def fetch_raw(driver: asyncpg.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    """Run one statement on an asyncpg connection and return its rows (asyncpg records).

    Errors are raised as SQLAlchemy's: ``IntegrityError`` for a constraint, else
    ``DBAPIError`` (``connection_invalidated`` when the connection is gone), with
    the asyncpg error as ``orig``.
    """
    import asyncpg

    try:
        return list(await driver.fetch(sql, *args))
    except asyncpg.IntegrityConstraintViolationError as err:
        raise IntegrityError(sql, None, err) from err
    except asyncpg.PostgresError as err:
        raise DBAPIError(sql, None, err) from err
    except (asyncpg.InterfaceError, OSError) as err:
        # The connection is gone (or unusable): the store drops and replaces it.
        raise DBAPIError(sql, None, err, connection_invalidated=True) from err


# -- SQLite: one executemany per write ----------------------------------------------


@cache
def _sqlite_statement(shape: tuple[Any, ...]) -> TextClause:
    table, names, update, returning, match, _ = shape
    if match:
        # No RETURNING: the caller counts updated rows by the cursor's rowcount.
        sets = ", ".join(f"{n} = :{n}" for n in _set_columns(names, match))
        where = " AND ".join(f"{c} = :{v}" for c, v in match)
        return text(f"UPDATE {table.name} SET {sets} WHERE {where}")
    values = ", ".join(f":{n}" for n in names)
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({values})"
    if update:
        keys = ", ".join(c.name for c in table.primary_key.columns)
        sets = ", ".join(f"{n} = excluded.{n}" for n in update)
        sql += f" ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    elif returning:
        sql += " ON CONFLICT DO NOTHING"
    if returning:
        sql += f" RETURNING {returning}"
    return text(sql)


def _rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


async def write_all(
    conn: AsyncConnection,
    writes: Sequence[Write],
    *,
    notify: tuple[str, list[str]] | None = None,
    driver: asyncpg.Connection | None = None,
) -> list[list[Any]]:
    """Perform ``writes`` in order, in the caller's transaction.

    Args:
        conn: The connection.
        writes: The writes; empty ones are skipped.
        notify: On Postgres, ``(channel, payloads)`` to NOTIFY at commit.
        driver: On Postgres, ``conn``'s asyncpg connection, to run the statement on
            directly. Only when the statement may run as it is: ``conn`` is in
            autocommit mode, or the transaction has begun on the server.

    Returns:
        For each of ``writes``, in order, the values its ``returning`` column returned
        (empty for writes without one, or without rows).

    Raises:
        sqlalchemy.exc.IntegrityError: A write conflicted with a row it did not expect
            (another coordinator got there first).
    """
    out: list[list[Any]] = [[] for _ in writes]
    todo = [(i, w) for i, w in enumerate(writes) if w.rows]
    if conn.dialect.name == "postgresql":
        do_notify = notify is not None and bool(notify[1])
        if not todo and not do_notify:
            return out
        params: dict[str, Any] = {}
        for n, (_, w) in enumerate(todo):
            params.update({f"w{n}_{name}": values for name, values in w.columns.items()})
        if notify is not None and do_notify:
            params["notify_channel"], params["notify_payloads"] = notify
        shapes = tuple(w.shape for _, w in todo)
        if driver is not None:
            sql, names = _pg_positional(shapes, do_notify)
            (result,) = await fetch_raw(driver, sql, [params[n] for n in names])
        else:
            result = (await conn.execute(_pg_statement(shapes, do_notify), params)).one()
        returning = [i for i, w in todo if w.returning]
        for column, i in enumerate(returning):
            out[i] = list(result[column] or [])
        return out
    for i, w in todo:
        stmt = _sqlite_statement(w.shape)
        if w.match and w.returning:
            updated = (await conn.execute(stmt, _rows(w.columns))).rowcount
            out[i] = [None] * updated
        elif w.returning:
            # One row at a time: SQLite's executemany cannot return rows.
            for row in _rows(w.columns):
                out[i].extend((await conn.execute(stmt, row)).scalars().all())
        else:
            await conn.execute(stmt, _rows(w.columns))
    return out

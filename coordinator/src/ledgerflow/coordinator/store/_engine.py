"""Engines for the two supported databases, and schema migrations to head.

Postgres (asyncpg) is the production store; SQLite (aiosqlite) is the embedded default
for a single process. Both are configured here so that the rest of the store can assume
the same transactional behavior: a transaction that has begun holds the right to write,
and SAVEPOINTs nest inside it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_only

if TYPE_CHECKING:
    import aiosqlite
    from alembic.config import Config

# Alembic is imported where migrations run: it adds ~0.2 s to every import of the store.

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///ledgerflow.db"
"""The embedded default: ``ledgerflow.db`` in the working directory."""

READ_ONLY = "ledgerflow_read_only"
"""Execution option for connections that only read: ``engine.execution_options(**{READ_ONLY:
True})`` or ``await conn.execution_options(**{READ_ONLY: True})`` before the first statement.
On SQLite their transactions begin DEFERRED, so they read a WAL snapshot without waiting
for (or blocking) the writer; on Postgres the option changes nothing."""

_MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Held (transaction-scoped) while migrating, so coordinators starting together on one
# Postgres database migrate one after another. Any fixed key works; this one is the
# ASCII bytes "lfmigrat" read as a big-endian int64, unlikely to collide with the keys of
# other applications sharing the database.
_MIGRATION_LOCK_KEY = int.from_bytes(b"lfmigrat", "big", signed=True)

_SUPPORTED = "postgresql+asyncpg:// (or postgresql://) or sqlite+aiosqlite:/// (or sqlite:///)"


def _normalize_url(url: str) -> URL:
    # Messages never include the URL itself: it may carry a password.
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: expected {_SUPPORTED}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"cannot parse the {scheme!r} database URL") from None
    driver = parsed.drivername
    if driver in ("postgresql", "postgres", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        if "sslmode" in parsed.query:
            # libpq spells it sslmode (and cloud providers hand out such URLs); asyncpg's
            # connect() takes the same values as `ssl` and rejects `sslmode`.
            query = dict(parsed.query)
            query.setdefault("ssl", query.pop("sslmode"))
            parsed = parsed.set(query=query)
        return parsed
    if driver in ("sqlite", "sqlite+aiosqlite"):
        if parsed.database in (None, "", ":memory:"):
            # An in-memory database loses every ledger on exit, and each pooled
            # connection would see a different one.
            raise ValueError("an SQLite database URL needs a file path (sqlite:///path/to.db)")
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported database URL scheme {driver!r}: use {_SUPPORTED}")


def create_engine(url: str | None) -> AsyncEngine:
    """Create the async engine for a database URL.

    Args:
        url: ``postgresql+asyncpg://...`` or ``sqlite+aiosqlite:///path`` (the driverless
            ``postgresql://``, ``postgres://`` and ``sqlite:///`` mean the same); None
            means :data:`DEFAULT_SQLITE_URL`.

    Returns:
        An engine whose transactions behave alike on both dialects (see the module
        docstring). No connection is made yet.

    Raises:
        ValueError: The URL is malformed, names another database or driver, or is an
            in-memory SQLite database. The message is one line and never contains the
            URL's password.
    """
    parsed = _normalize_url(DEFAULT_SQLITE_URL if url is None else url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_async_engine(
        parsed,
        pool_size=10,
        max_overflow=10,
        # Detects connections the server dropped (restart, failover, idle timeout)
        # before a transaction is started on them.
        pool_pre_ping=True,
    )


# How long a statement may wait for another connection's lock before failing with
# "database is locked".
_BUSY_TIMEOUT_MS = 5000


def _sqlite_engine(url: URL) -> AsyncEngine:
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Stop the sqlite3 module from issuing BEGIN itself: in its legacy mode it begins
        # only before DML, so a SAVEPOINT or SELECT issued first runs outside any
        # transaction and a later ROLLBACK cannot undo it. `_on_begin` takes over.
        dbapi_connection.isolation_level = None
        driver: aiosqlite.Connection = dbapi_connection.driver_connection
        _script(
            driver,
            f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS};"
            # FULL fsyncs the WAL at every commit, so a committed append survives power
            # loss (NORMAL, the usual WAL pairing, may lose the last commits).
            "PRAGMA synchronous = FULL;"
            "PRAGMA foreign_keys = ON;",
        )
        # WAL lets readers proceed while one writer commits. The mode is stored in the
        # file, so this switches once per database file.
        if list(await_only(driver.execute_fetchall("PRAGMA journal_mode"))) != [("wal",)]:
            _without_waiting_in_sqlite(driver, "PRAGMA journal_mode = WAL")

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        driver: aiosqlite.Connection | None = conn.connection.driver_connection
        assert driver is not None  # a checked-out connection is never detached
        if conn.get_execution_options().get(READ_ONLY):
            _script(driver, "BEGIN")
            return
        # IMMEDIATE takes the write lock up front. A DEFERRED transaction that reads and
        # then writes fails with "database is locked" when another writer committed in
        # between (no wait can help: its snapshot is stale); store transactions write, so
        # they queue for the lock here instead.
        _without_waiting_in_sqlite(driver, "BEGIN IMMEDIATE")

    return engine


def _script(driver: aiosqlite.Connection, script: str) -> None:
    # One round trip, and no statement outlives it (executescript finalizes each), so no
    # cursor is left for the garbage collector (see _without_waiting_in_sqlite).
    if driver.in_transaction:
        # sqlite3 before Python 3.12 COMMITs an open transaction before executescript;
        # SQLAlchemy begins only on a connection it knows is outside one, so this is a bug.
        raise RuntimeError("SQLite connection unexpectedly inside a transaction")
    await_only(driver.executescript(script))


def _without_waiting_in_sqlite(driver: aiosqlite.Connection, statement: str) -> None:
    """Run a statement that needs a lock, waiting for the lock on the event loop.

    SQLite's own busy wait runs inside the statement, holding the connection's mutex. The
    cyclic garbage collector, run on the event loop thread, then finalizing a cursor of
    that connection (one an earlier error left unclosed: SQLAlchemy's aiosqlite adapter
    does not close it) blocks on that mutex: the whole process stops, the lock holder
    cannot commit, and the waiter fails when busy_timeout runs out. So the statement runs
    with busy_timeout 0 and the wait happens here, for the same time budget, with the
    event loop free. (Switching a new file to WAL needs this too: connections switching at
    the same moment deadlock, and SQLite fails one at once without calling the busy
    handler.)
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            _script(
                driver,
                f"PRAGMA busy_timeout = 0; {statement}; PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS};",
            )
        except sqlite3.Error as err:
            _script(driver, f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS};")
            # Extended codes (SQLITE_BUSY_RECOVERY, ...) keep the primary code in the low byte.
            if err.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                # What SQLAlchemy raises for the same error from a statement it ran.
                raise DBAPIError.instance(statement, None, err, sqlite3.Error) from err
        else:
            return
        await_only(asyncio.sleep(delay))
        delay = min(delay * 2, 0.025)


def dialect_name(engine: AsyncEngine) -> str:
    """Return the engine's dialect: ``"postgresql"`` or ``"sqlite"``."""
    return engine.dialect.name


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    # Computed from this file, not the working directory, so it also works installed.
    # ConfigParser interpolates '%'.
    config.set_main_option("script_location", str(_MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _upgrade_sync(connection: Connection) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every schema migration the database lacks, in one transaction.

    Idempotent and safe to call at every start: on Postgres, concurrent callers are
    serialized by an advisory lock; on SQLite by the write lock (``BEGIN IMMEDIATE``).

    Args:
        engine: An engine from :func:`create_engine`.

    Raises:
        alembic.util.exc.CommandError: The database is at a revision these migrations do
            not know (a newer ledgerflow migrated it).
        sqlalchemy.exc.SQLAlchemyError: The database is unreachable or refused a statement.
    """
    async with engine.begin() as conn:
        if dialect_name(engine) == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        await conn.run_sync(_upgrade_sync)


def _current_revision_sync(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """Return the database's migration revision, or None before the first migration."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{READ_ONLY: True})
        return await conn.run_sync(_current_revision_sync)

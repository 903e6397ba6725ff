"""Migrations: the schema they build is exactly `_schema.metadata`, and upgrading is idempotent."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from ledgerflow.coordinator.store import create_engine, current_revision, upgrade
from ledgerflow.coordinator.store._engine import _MIGRATIONS_DIR
from ledgerflow.coordinator.store._schema import metadata

_DDL_AND_DML = {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"}


def _head() -> str | None:
    return ScriptDirectory(str(_MIGRATIONS_DIR)).get_current_head()


def _diff(conn: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def test_upgraded_schema_matches_the_metadata(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
    assert await current_revision(engine) == _head()


async def test_migrations_are_found_from_any_working_directory(
    engine: AsyncEngine, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    await upgrade(engine)
    assert await current_revision(engine) == _head()


async def test_upgrading_again_changes_nothing(engine: AsyncEngine) -> None:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        await upgrade(engine)
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert statements  # it did look
    writes = [s for s in statements if s.lstrip().split()[0].upper() in _DDL_AND_DML]
    assert writes == []
    assert await current_revision(engine) == _head()


async def test_a_fresh_database_has_no_revision(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) is None
    finally:
        await engine.dispose()


async def test_coordinators_starting_together_migrate_once(db_url: str) -> None:
    # Engines stand for coordinator processes sharing a fresh database.
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade(e) for e in engines))
        revisions = [await current_revision(e) for e in engines]
        async with engines[0].connect() as conn:
            assert await conn.run_sync(_diff) == []
            versions = list(
                (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars()
            )
    finally:
        for e in engines:
            await e.dispose()
    assert revisions == [_head()] * 3
    assert versions == [_head()]


async def test_downgrade_to_base_and_back(engine: AsyncEngine) -> None:
    from alembic import command

    from ledgerflow.coordinator.store._engine import _alembic_config

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "base"))
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    assert names == ["alembic_version"]
    await upgrade(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []

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


async def test_0002_splits_stored_steps_out_and_back(engine: AsyncEngine) -> None:
    """A run written in the 0001 layout (whole snapshot in the row) survives 0002 both ways."""
    from alembic import command

    from ledgerflow.coordinator.store import Store, verify
    from ledgerflow.coordinator.store._engine import _alembic_config
    from ledgerflow.coordinator.store._schema import events, run_steps, runs
    from ledgerflow.ledger import (
        apply_event,
        apply_journal_event,
        empty_journal,
        empty_snapshot,
        json_payload,
    )
    from ledgerflow.ledger._time import set_nanos
    from ledgerflow.v1 import ledger_pb2 as pb

    ledger = []
    for i, case in enumerate(["run_created", "step_started", "step_completed", "step_started"]):
        e = pb.LedgerEvent(run_id="old", seq=i + 1, source=pb.EVENT_SOURCE_WORKER)
        set_nanos(e.event_time, 1_700_000_000_000_000_000 + i)
        if case == "run_created":
            e.run_created.workflow_name = "wf"
        elif case == "step_completed":
            e.step_completed.step_id = "a"
            e.step_completed.output.CopyFrom(json_payload({"n": 1}))
        else:
            e.step_started.step_id = "a" if i == 1 else "b"
        ledger.append(e)
    snapshot, journal = empty_snapshot("old"), empty_journal()
    for e in ledger:
        apply_event(snapshot, e)
        apply_journal_event(journal, e)

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0001"))
        await conn.execute(
            runs.insert().values(
                run_id="old",
                workflow_name="wf",
                status=snapshot.status,
                create_time=1,
                update_time=1,
                last_seq=len(ledger),
                snapshot=snapshot.SerializeToString(deterministic=True),
                journal=journal.SerializeToString(deterministic=True),
            )
        )
        await conn.execute(
            events.insert(),
            [
                {
                    "run_id": "old",
                    "seq": e.seq,
                    "event_type": e.WhichOneof("payload"),
                    "event_time": 0,
                    "data": e.SerializeToString(deterministic=True),
                }
                for e in ledger
            ],
        )
    await upgrade(engine)
    async with engine.connect() as conn:
        step_ids = (await conn.execute(sa.select(run_steps.c.step_id))).scalars().all()
        head = (await conn.execute(sa.select(runs.c.snapshot))).scalar_one()
    assert sorted(step_ids) == ["a", "b"]
    assert not pb.RunSnapshot.FromString(head).steps
    assert await verify(engine) == (1, [])
    store = Store(engine)
    assert await store.get_run("old") == snapshot

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0001"))
        restored = (await conn.execute(sa.select(runs.c.snapshot, runs.c.journal))).one()
    assert pb.RunSnapshot.FromString(restored.snapshot) == snapshot
    from ledgerflow.v1 import journal_pb2

    assert journal_pb2.JournalSlice.FromString(restored.journal) == journal
    await upgrade(engine)

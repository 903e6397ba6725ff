"""Engines: URL handling, SQLite durability settings and transaction semantics."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledgerflow.coordinator.store import (
    DEFAULT_SQLITE_URL,
    READ_ONLY,
    _engine,
    create_engine,
    dialect_name,
)
from tests.pg_cluster import PgCluster

_scratch = sa.MetaData()
_items = sa.Table("scratch_items", _scratch, sa.Column("k", sa.Integer, primary_key=True))
_counter = sa.Table(
    "scratch_counter",
    _scratch,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql+asyncpg://u:pw@db:5432/lf", "postgresql+asyncpg"),
        ("postgresql://u:pw@db/lf", "postgresql+asyncpg"),
        ("postgres://u:pw@db/lf", "postgresql+asyncpg"),
        ("sqlite:///some/file.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:////abs/file.db", "sqlite+aiosqlite"),
    ],
)
async def test_accepted_urls_use_the_async_drivers(url: str, driver: str) -> None:
    engine = create_engine(url)
    try:
        assert engine.url.drivername == driver
        assert dialect_name(engine) == driver.split("+")[0]
    finally:
        await engine.dispose()


async def test_none_is_the_sqlite_file_in_the_working_directory() -> None:
    engine = create_engine(None)
    try:
        assert str(engine.url) == DEFAULT_SQLITE_URL == "sqlite+aiosqlite:///ledgerflow.db"
    finally:
        await engine.dispose()


async def test_libpq_sslmode_becomes_asyncpg_ssl() -> None:
    engine = create_engine("postgresql://u@db/lf?sslmode=require")
    try:
        assert dict(engine.url.query) == {"ssl": "require"}
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+pymysql://u:hunter2@db/lf", "unsupported database URL scheme 'mysql+pymysql'"),
        ("postgresql+psycopg2://u:hunter2@db/lf", "scheme 'postgresql+psycopg2'"),
        ("u:hunter2@db/lf", "not a database URL"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///:memory:", "needs a file path"),
    ],
)
def test_rejected_urls_say_why_in_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]*$") as info:
        create_engine(url)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


def test_rendered_urls_hide_the_password() -> None:
    engine = create_engine("postgresql://u:hunter2@db/lf")
    assert "hunter2" not in engine.url.render_as_string(hide_password=True)
    assert "hunter2" not in repr(engine)


async def test_sqlite_is_configured_for_durability(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        await engine.dispose()
    # synchronous 2 is FULL.
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }


async def test_postgres_pool_is_sized_and_checks_connections_before_use() -> None:
    engine = create_engine("postgresql://u@db/lf")
    try:
        pool = engine.sync_engine.pool
        assert isinstance(pool, sa.pool.AsyncAdaptedQueuePool)
        assert pool.size() == 10
        assert pool._pre_ping
    finally:
        await engine.dispose()


async def _keys(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(_items.c.k).order_by(_items.c.k))).scalars())


async def test_savepoint_rollback_keeps_the_rest_of_the_transaction(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_scratch.create_all)
    async with engine.begin() as conn:
        # A SAVEPOINT as the transaction's first statement: legacy sqlite3 transaction
        # handling would run it outside any transaction.
        nested = await conn.begin_nested()
        await conn.execute(_items.insert(), [{"k": 1}])
        await nested.rollback()
        await conn.execute(_items.insert(), [{"k": 2}])
        nested = await conn.begin_nested()
        await conn.execute(_items.insert(), [{"k": 3}])
        await nested.commit()
    assert await _keys(engine) == [2, 3]


async def test_outer_rollback_undoes_released_savepoints(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_scratch.create_all)
    async with engine.connect() as conn:
        outer = await conn.begin()
        async with conn.begin_nested():
            await conn.execute(_items.insert(), [{"k": 1}])
        await outer.rollback()
    assert await _keys(engine) == []


async def test_sqlite_writers_on_one_engine_queue_instead_of_failing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(_scratch.create_all)
        await conn.execute(_counter.insert(), [{"id": 1, "value": 0}])

    writers, rounds = 8, 5
    inside = max_inside = 0
    barrier = asyncio.Barrier(writers)

    async def increment() -> None:
        nonlocal inside, max_inside
        await barrier.wait()
        for _ in range(rounds):
            # Read, then write from what was read: under DEFERRED transactions two writers
            # would read the same value and the later one fail with "database is locked".
            async with engine.begin() as conn:
                inside += 1
                max_inside = max(max_inside, inside)
                value = (await conn.execute(sa.select(_counter.c.value))).scalar_one()
                await conn.execute(_counter.update().values(value=value + 1))
                inside -= 1

    try:
        await asyncio.gather(*(increment() for _ in range(writers)))
        async with engine.connect() as conn:
            final = (await conn.execute(sa.select(_counter.c.value))).scalar_one()
    finally:
        await engine.dispose()
    assert final == writers * rounds
    # BEGIN IMMEDIATE returned to one transaction at a time.
    assert max_inside == 1


async def test_sqlite_readers_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(_scratch.create_all)
        await conn.execute(_items.insert(), [{"k": 1}])
    reader_engine = engine.execution_options(**{READ_ONLY: True})
    try:
        async with engine.begin() as writer:
            await writer.execute(_items.insert(), [{"k": 2}])
            # The writer holds the write lock until the block ends: a reader that needed it
            # would wait out busy_timeout and fail. It reads the last committed state.
            async with reader_engine.connect() as reader:
                seen = list((await reader.execute(sa.select(_items.c.k))).scalars())
        assert seen == [1]
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(_scratch.create_all)
        await conn.execute(_items.insert(), [{"k": 1}])
    try:
        yield engine
    finally:
        await engine.dispose()


async def _on_begin_immediate(conn: AsyncConnection) -> asyncio.Event:
    """An event set when `conn` next starts a BEGIN IMMEDIATE (whether or not it gets the lock)."""
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def trace(statement: str) -> None:  # runs on aiosqlite's thread
        if "BEGIN IMMEDIATE" in statement:
            loop.call_soon_threadsafe(started.set)

    raw = await conn.get_raw_connection()
    assert raw.driver_connection is not None
    await raw.driver_connection.set_trace_callback(trace)
    return started


async def test_sqlite_writer_waiting_for_the_lock_leaves_the_event_loop_free(
    sqlite_engine: AsyncEngine,
) -> None:
    # SQLite's own busy wait would hold the waiting connection's mutex, and the garbage
    # collector finalizing a cursor that an earlier error left unclosed on that connection
    # would block the event loop on it until busy_timeout: no commit could happen
    # meanwhile and the waiter would fail with "database is locked".
    gc.disable()
    try:
        async with sqlite_engine.connect() as holder, sqlite_engine.connect() as waiter:
            with pytest.raises(IntegrityError):
                async with waiter.begin():
                    await waiter.execute(_items.insert(), [{"k": 1}])
            attempted = await _on_begin_immediate(waiter)
            await holder.begin()
            await holder.execute(_items.insert(), [{"k": 2}])

            async def write() -> None:
                async with waiter.begin():
                    await waiter.execute(_items.insert(), [{"k": 3}])

            writing = asyncio.create_task(write())
            await attempted.wait()
            began = time.perf_counter()
            gc.collect()
            collect_seconds = time.perf_counter() - began
            await holder.commit()
            await writing
    finally:
        gc.enable()
    assert collect_seconds < 1.0
    assert await _keys(sqlite_engine) == [1, 2, 3]


async def test_sqlite_writer_gives_up_after_the_busy_timeout(
    sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine, "_BUSY_TIMEOUT_MS", 50)
    async with sqlite_engine.connect() as holder, sqlite_engine.connect() as waiter:
        await holder.begin()
        with pytest.raises(OperationalError, match="database is locked"):
            await waiter.begin()
        await holder.rollback()
        # Nothing was left half-begun, and the connection waits for locks again.
        async with waiter.begin():
            assert (await waiter.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 50
            await waiter.execute(_items.insert(), [{"k": 2}])
    assert await _keys(sqlite_engine) == [1, 2]


async def test_postgres_engine_recovers_when_the_server_comes_back(pg_cluster: PgCluster) -> None:
    engine = create_engine(pg_cluster.create_database("comes_back"))

    async def select_one() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(sa.text("SELECT 1"))).scalar_one())

    try:
        assert await select_one() == 1  # leaves an idle connection in the pool
        pg_cluster.restart()
        # The pooled connection died with the server; the pre-ping replaces it.
        assert await select_one() == 1
        pg_cluster.stop()
        try:
            with pytest.raises((OSError, sa.exc.DBAPIError)):
                await select_one()
        finally:
            pg_cluster.start()
        assert await select_one() == 1
    finally:
        await engine.dispose()

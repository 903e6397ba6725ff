"""The group-commit append path: what it relies on in the ledger core, its row cache, races."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledgerflow.coordinator.store import StartRunSpec, Store
from ledgerflow.coordinator.store import _append as ops
from ledgerflow.coordinator.store._append import ends_run, step_of
from ledgerflow.errors import FailedPreconditionError
from ledgerflow.ledger import (
    LogRetention,
    apply_event,
    apply_journal_event,
    empty_journal,
    empty_snapshot,
    is_terminal,
)
from ledgerflow.v1 import journal_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from tests.coordinator.test_store import assert_consistent, ev
from tests.ledger.test_properties import LEDGERS


def _steps(snapshot: pb.RunSnapshot, journal: journal_pb2.JournalSlice) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, entries in (
        ("snapshot", snapshot.steps),
        ("result", journal.step_results),
        ("pending", journal.pending_steps),
    ):
        for step_id, entry in entries.items():
            out[f"{name}:{step_id}"] = entry.SerializeToString(deterministic=True)
    return out


@settings(max_examples=300, deadline=None)
@given(ledger=LEDGERS)
def test_an_event_changes_no_step_but_the_one_it_names(ledger: list[pb.LedgerEvent]) -> None:
    # The store rewrites only the run_steps rows an append's events name.
    snapshot, journal = empty_snapshot("r"), empty_journal()
    for seq, event in enumerate(ledger, start=1):
        event.seq = seq
        before = _steps(snapshot, journal)
        apply_event(snapshot, event)
        apply_journal_event(journal, event)
        after = _steps(snapshot, journal)
        changed = {key.split(":", 1)[1] for key in before.keys() | after.keys()}
        changed = {s for s in changed if before.get(f"snapshot:{s}") != after.get(f"snapshot:{s}")}
        changed |= {
            key.split(":", 1)[1]
            for key in before.keys() | after.keys()
            if not key.startswith("snapshot:") and before.get(key) != after.get(key)
        }
        assert changed <= {step_of(event)}, event.WhichOneof("payload")


@settings(max_examples=300, deadline=None)
@given(ledger=LEDGERS)
def test_ends_run_says_exactly_when_the_reducer_finishes_a_run(
    ledger: list[pb.LedgerEvent],
) -> None:
    # The store refuses events after a run's end before folding anything, by ends_run.
    snapshot = empty_snapshot("r")
    for event in ledger:
        was = is_terminal(snapshot.status)
        apply_event(snapshot, event)
        assert is_terminal(snapshot.status) == (was or ends_run(event))


async def test_two_stores_on_one_database_never_trust_a_stale_cache(engine: AsyncEngine) -> None:
    # Stand-ins for two coordinator processes: each caches the rows it wrote, and
    # each must notice the other's appends (last_seq moved) and reload.
    one, two = Store(engine), Store(engine)
    await one.start()
    await two.start()
    try:
        await one.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
        for i in range(6):
            writer = one if i % 2 else two
            await writer.append_events(
                [
                    ev("a", "step_started", i, step_id=f"s{i}"),
                    ev("a", "log_appended", i, lines=[f"l{i}"], channel="c", channel_offset=i),
                    ev("a", "step_completed", i, step_id=f"s{i}"),
                ]
            )
        # A resend of the first positional batch through the store that did not ingest it.
        resent = await one.append_events(
            [ev("a", "log_appended", 9, lines=["l0"], channel="c", channel_offset=0)]
        )
        assert resent.appended == []
    finally:
        await one.close()
        await two.close()
    events = await assert_consistent(Store(engine), "a")
    assert len(events) == 1 + 6 * 3
    snapshot = await Store(engine).get_run("a")
    assert sorted(snapshot.steps) == [f"s{i}" for i in range(6)]
    assert snapshot.total_log_count == 6


async def test_a_refused_request_leaves_the_cached_run_untouched(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    await store.append_events([ev("a", "run_completed", 2)])
    results = await asyncio.gather(
        # Refused at its second event: the first (a log line) must not stick either.
        store.append_events(
            [ev("a", "log_appended", 3, lines=["x"]), ev("a", "step_started", 3, step_id="s")]
        ),
        store.append_events([ev("a", "log_appended", 4, lines=["y"])]),
        return_exceptions=True,
    )
    assert isinstance(results[0], FailedPreconditionError)
    assert "events[1] (step_started)" in str(results[0])
    events = await assert_consistent(store, "a")
    assert [e.WhichOneof("payload") for e in events] == [
        "run_created",
        "run_completed",
        "log_appended",
    ]
    # The writer's cached row is the committed one: the next append continues from it.
    await store.append_events([ev("a", "log_appended", 5, lines=["z"])])
    assert (await store.get_run("a")).log_tail == ["y", "z"]


async def test_an_event_after_an_end_in_the_same_request_is_refused(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    with pytest.raises(FailedPreconditionError, match=r"events\[1\] \(run_started\)"):
        await store.append_events([ev("a", "run_failed", 2), ev("a", "run_started", 3)])
    assert len(await assert_consistent(store, "a")) == 1


async def test_long_runs_store_each_step_once(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    for i in range(30):
        await store.append_events(
            [
                ev("a", "step_started", i, step_id=f"s{i}"),
                ev("a", "step_completed", i, step_id=f"s{i}"),
            ]
        )
    await assert_consistent(store, "a")
    async with store.engine.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM run_steps WHERE run_id = 'a'"))
        head = await conn.scalar(text("SELECT snapshot FROM runs WHERE run_id = 'a'"))
    assert count == 30
    assert not pb.RunSnapshot.FromString(head).steps  # the row holds the head only


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_losing_a_creation_race_to_another_coordinator_redoes_the_group(
    engine: AsyncEngine,
) -> None:
    # Another coordinator's transaction has created run "a" but not committed. Our
    # store's lock finds no row, so its INSERT ... ON CONFLICT waits for the other
    # transaction, then inserts nothing: it must redo its group against the
    # committed run (and answer "already exists"), never fail or make a second run.
    rival = Store(engine)
    ours = Store(engine)
    await ours.start()
    try:
        async with engine.connect() as conn:
            await conn.begin()
            batch = ops.Batch(conn, {}, {}, {})
            await ops.start_run(
                batch,
                StartRunSpec(workflow_name="wf", run_id="a"),
                run_id="a",
                now=1_700_000_000_000_000_000,
                retention=LogRetention(),
            )
            await rival._flush(conn, batch)
            racing = asyncio.create_task(
                ours.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
            )
            async with engine.connect() as probe:
                # Postgres cannot notify lock waits; poll until ours waits on the row.
                for _ in range(2000):
                    waiting = await probe.scalar(
                        text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    )
                    await probe.rollback()
                    if waiting or racing.done():
                        break
                    await asyncio.sleep(0.005)
            assert not racing.done()
            await conn.commit()
        snapshot, created = await racing
    finally:
        await ours.close()
    assert (snapshot.run_id, created) == ("a", False)
    assert len(await assert_consistent(Store(engine), "a")) == 1


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_killed_database_connection_mid_stream_loses_and_doubles_nothing(
    engine: AsyncEngine,
) -> None:
    # Appends stream in while the writer's backend is terminated under it, twice.
    # Every acknowledged append must be stored exactly once; failed ones not at all
    # (each carries a batch id, so a client retry is answered, never appended twice);
    # and the writer's cached rows must not outlive the transaction that died.
    store = Store(engine)
    await store.start()
    acked: list[int] = []
    failed: list[int] = []
    try:
        await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))

        async def producer(n: int) -> None:
            for i in range(n, 120, 4):
                batch = [
                    ev("a", "step_started", i, step_id=f"s{i}"),
                    ev("a", "step_completed", i, step_id=f"s{i}"),
                ]
                try:
                    await store.append_events(batch, request_id=f"b{i}")
                    acked.append(i)
                except Exception:
                    failed.append(i)

        async def killer() -> None:
            async with engine.connect() as admin:
                for _ in range(2):
                    # Wait until a few more appends were acknowledged, then kill.
                    target = len(acked) + 10
                    while len(acked) < target and len(acked) + len(failed) < 120:
                        await asyncio.sleep(0)
                        await admin.execute(text("SELECT 1"))
                    for pid in store.writer_pids:
                        await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    await admin.commit()

        await asyncio.gather(*(producer(n) for n in range(4)), killer())
        assert failed  # the kills did hit in-flight groups
        # Retry what failed, as a client would, with the same batch ids.
        for i in failed:
            await store.append_events(
                [
                    ev("a", "step_started", i, step_id=f"s{i}"),
                    ev("a", "step_completed", i, step_id=f"s{i}"),
                ],
                request_id=f"b{i}",
            )
    finally:
        await store.close()
    events = await assert_consistent(Store(engine), "a")
    started = sorted(int(e.step_started.step_id[1:]) for e in events if e.HasField("step_started"))
    assert started == list(range(120))  # each exactly once, nothing lost
    assert len(events) == 1 + 2 * 120


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_writer_connection_the_server_closed_is_replaced_before_use(
    engine: AsyncEngine,
) -> None:
    # The writer keeps its connection between groups. When the server ends it while
    # idle (a restart, here pg_terminate_backend), asyncpg notices at once; the next
    # group must go to a new connection, not fail on the dead one.
    store = Store(engine)
    await store.start()
    try:
        await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
        (old_pid,) = store.writer_pids
        writer = store._driver  # the writer's asyncpg connection (white-box: to await its end)
        assert writer is not None
        ended = asyncio.Event()
        writer.add_termination_listener(lambda _conn: ended.set())
        async with engine.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": old_pid})
        await asyncio.wait_for(ended.wait(), 30)
        snapshot, created = await store.start_run(StartRunSpec(workflow_name="wf", run_id="b"))
        assert (snapshot.run_id, created) == ("b", True)
        assert len(store.writer_pids - {old_pid}) == 1  # a new backend wrote it
    finally:
        await store.close()
    assert len(await assert_consistent(Store(engine), "b")) == 1


async def test_a_write_from_a_stale_cached_row_is_refused_whole(store: Store) -> None:
    # Something else moved the run's row on (here by hand: last_seq bumped without
    # events, which no coordinator does, so the seq guard is the only thing that can
    # notice). The fully cached group's write must fail as a whole — on Postgres a
    # single statement without a transaction around it — and be redone from the row.
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    await store.append_events([ev("a", "log_appended", 1, lines=["cached"])])
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE runs SET last_seq = 10 WHERE run_id = 'a'"))
    await store.append_events([ev("a", "log_appended", 2, lines=["after"])])
    async with store.engine.connect() as conn:
        seqs = (
            (await conn.execute(text("SELECT seq FROM events WHERE run_id = 'a' ORDER BY seq")))
            .scalars()
            .all()
        )
    # Nothing was written at the stale seq 3; the redo appended after the moved row.
    assert list(seqs) == [1, 2, 11]

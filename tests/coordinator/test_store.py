"""The store's write path on real SQLite and a real private Postgres cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledgerflow.coordinator.store import StartRunSpec, Store, Touched, create_engine
from ledgerflow.coordinator.store._schema import events as events_table
from ledgerflow.coordinator.store._schema import log_lines
from ledgerflow.errors import (
    FailedPreconditionError,
    RunAlreadyExistsError,
    RunNotFoundError,
)
from ledgerflow.ledger import (
    empty_journal,
    empty_snapshot,
    json_payload,
    project_journal_events,
    reduce_events,
)
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb


def ev(run_id: str, case: str, t: int = 1, **fields: object) -> pb.LedgerEvent:
    event = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(event.event_time, t * 1_000_000)
    payload = getattr(event, case)
    payload.CopyFrom(type(payload)(**fields))
    payload.SetInParent()
    return event


async def all_events(store: Store, run_id: str) -> list[pb.LedgerEvent]:
    out: list[pb.LedgerEvent] = []
    after = 0
    while True:
        page, more = await store.get_events(run_id, after, 1000)
        out.extend(page)
        if not page or not more:
            return out
        after = page[-1].seq


async def assert_consistent(store: Store, run_id: str) -> list[pb.LedgerEvent]:
    """Seqs are 1..n without gaps and the stored snapshot/journal equal a re-reduction."""
    events = await all_events(store, run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    snap = await store.get_run(run_id)
    assert snap.last_seq == len(events)
    fresh = reduce_events(empty_snapshot(run_id), events)
    assert snap.SerializeToString(deterministic=True) == fresh.SerializeToString(deterministic=True)
    async with store.engine.connect() as conn:
        from ledgerflow.coordinator.store._sql_runs import load_runs

        row = (await load_runs(conn, [run_id]))[run_id]
    assert row.journal == project_journal_events(empty_journal(), events)
    return events


async def test_start_run_creates_a_queued_run(store: Store) -> None:
    snap, created = await store.start_run(
        StartRunSpec(workflow_name="wf", run_id="r1", input=json_payload({"a": 1}), tags=("t",))
    )
    assert created
    assert (snap.run_id, snap.status, snap.last_seq, list(snap.tags)) == (
        "r1",
        pb.RUN_STATUS_QUEUED,
        1,
        ["t"],
    )
    (first,) = await assert_consistent(store, "r1")
    assert first.run_created.workflow_name == "wf"
    assert first.source == pb.EVENT_SOURCE_CLIENT


async def test_start_run_is_idempotent_by_run_id_and_key(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="r1", idempotency_key="k"))
    again, created = await store.start_run(StartRunSpec(workflow_name="wf", run_id="r1"))
    assert not created
    assert again.run_id == "r1"
    by_key, created = await store.start_run(
        StartRunSpec(workflow_name="wf", run_id="other", idempotency_key="k")
    )
    assert not created
    assert by_key.run_id == "r1"
    assert await store.find_run("other") is None
    with pytest.raises(RunAlreadyExistsError):
        await store.start_run(StartRunSpec(workflow_name="different", run_id="r1"))
    assert len(await assert_consistent(store, "r1")) == 1


async def test_concurrent_start_run_retries_create_one_run(store: Store) -> None:
    results = await asyncio.gather(
        *(
            store.start_run(StartRunSpec(workflow_name="wf", idempotency_key="same"))
            for _ in range(20)
        )
    )
    assert len({snap.run_id for snap, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_start_run_generates_distinct_ids(store: Store) -> None:
    a, _ = await store.start_run(StartRunSpec(workflow_name="wf"))
    b, _ = await store.start_run(StartRunSpec(workflow_name="wf"))
    assert a.run_id != b.run_id


async def test_append_assigns_gapless_seqs_across_runs_in_one_batch(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    outcome = await store.append_events(
        [
            ev("a", "run_started", 2),
            ev("b", "run_created", 2, workflow_name="wf"),
            ev("a", "step_started", 3, step_id="s"),
            ev("b", "run_started", 3),
        ]
    )
    assert outcome.ranges == {"a": (2, 3), "b": (1, 2)}
    assert list(outcome.ranges) == ["a", "b"]
    await assert_consistent(store, "a")
    await assert_consistent(store, "b")
    assert (await store.get_run("a")).active_step_id == "s"


async def test_unknown_run_and_duplicate_creation_are_refused_without_change(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    with pytest.raises(RunNotFoundError):
        await store.append_events([ev("a", "run_started"), ev("ghost", "run_started")])
    with pytest.raises(RunAlreadyExistsError):
        await store.append_events([ev("a", "run_created", workflow_name="wf")])
    assert len(await assert_consistent(store, "a")) == 1  # the whole batch was refused
    assert await store.find_run("ghost") is None


async def test_finished_runs_refuse_what_cannot_follow_an_end(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    await store.append_events([ev("a", "run_completed", 5)])
    with pytest.raises(FailedPreconditionError, match="already finished"):
        await store.append_events([ev("a", "step_started", 6, step_id="late")])
    with pytest.raises(FailedPreconditionError):
        await store.signal_run("a", name="go", payload=None, request_id="", identity="me")
    with pytest.raises(FailedPreconditionError):
        await store.cancel_run("a", reason="", identity="me")
    # Logs and a demoting failure may still follow an end.
    await store.append_events(
        [ev("a", "log_appended", 7, lines=["late"]), ev("a", "run_failed", 8)]
    )
    assert (await store.get_run("a")).status == pb.RUN_STATUS_FAILED
    assert len(await assert_consistent(store, "a")) == 4


async def test_a_resent_batch_is_acknowledged_without_a_second_append(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    batch = [ev("a", "log_appended", 2, lines=["x"]), ev("a", "run_started", 3)]
    first = await store.append_events(batch, request_id="batch:1")
    again = await store.append_events(batch, request_id="batch:1")
    assert not first.duplicate
    assert again.duplicate
    assert again.ranges == first.ranges == {"a": (2, 3)}
    assert len(await assert_consistent(store, "a")) == 3


async def test_many_concurrent_appenders_on_one_run_never_gap_or_duplicate(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="hot"))

    async def appender(n: int) -> None:
        for i in range(10):
            await store.append_events([ev("hot", "log_appended", n * 100 + i, lines=[f"{n}:{i}"])])

    await asyncio.gather(*(appender(n) for n in range(20)))
    events = await assert_consistent(store, "hot")
    assert len(events) == 201
    texts = sorted(e.log_appended.lines[0] for e in events[1:])
    assert texts == sorted(f"{n}:{i}" for n in range(20) for i in range(10))
    assert (await store.get_run("hot")).total_log_count == 200


async def test_one_refused_request_does_not_undo_its_group(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    results = await asyncio.gather(
        *(store.append_events([ev("a", "log_appended", i, lines=[str(i)])]) for i in range(5)),
        store.append_events([ev("ghost", "run_started")]),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results][-1] == "RunNotFoundError"
    assert all(not isinstance(r, BaseException) for r in results[:-1])
    assert len(await assert_consistent(store, "a")) == 6


async def test_positional_logs_are_stored_exactly_once(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))

    def logs(offset: int, lines: Sequence[str]) -> pb.LedgerEvent:
        return ev("a", "log_appended", 2, lines=list(lines), channel="out", channel_offset=offset)

    await store.append_events([logs(0, ["a", "a", "b"])])
    outcome = await store.append_events([logs(1, ["a", "b", "c"])])  # overlap, then one new
    assert outcome.ranges == {"a": (3, 3)}
    nothing = await store.append_events([logs(0, ["a", "a"])])  # a full resend
    assert nothing.ranges == {}
    lines = await store.get_log_lines("a", 1, 100)
    assert [(line.seq, line.text) for line in lines] == [(1, "a"), (2, "a"), (3, "b"), (4, "c")]
    snap = await store.get_run("a")
    assert snap.total_log_count == 4
    assert list(snap.log_tail) == ["a", "a", "b", "c"]
    await assert_consistent(store, "a")


async def test_signals_deduplicate_by_request_id_and_cancel_is_recorded_once(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    seq, dup = await store.signal_run(
        "a", name="approve", payload=json_payload(True), request_id="req-1", identity="me"
    )
    again, dup2 = await store.signal_run(
        "a", name="approve", payload=json_payload(True), request_id="req-1", identity="me"
    )
    assert (seq, dup, again, dup2) == (2, False, 2, True)
    first, already = await store.cancel_run("a", reason="stop", identity="me")
    second, already2 = await store.cancel_run("a", reason="again", identity="me")
    assert (first, already, second, already2) == (3, False, 3, True)
    snap = await store.get_run("a")
    assert snap.cancel_requested
    assert snap.cancel_reason == "stop"
    with pytest.raises(RunNotFoundError):
        await store.cancel_run("ghost", reason="", identity="")
    await assert_consistent(store, "a")


async def test_commits_are_published_after_they_are_durable(engine: AsyncEngine) -> None:
    seen: list[tuple[str, int]] = []

    def on_commit(touched: Sequence[Touched]) -> None:
        seen.extend((t.run_id, t.last_seq) for t in touched)

    store = Store(engine, on_commit=on_commit)
    await store.start()
    try:
        await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
        await store.append_events([ev("a", "run_started")])
    finally:
        await store.close()
    assert seen == [("a", 1), ("a", 2)]


async def test_everything_survives_a_restart(db_url: str) -> None:
    from ledgerflow.coordinator.store import upgrade

    engine = create_engine(db_url)
    await upgrade(engine)
    store = Store(engine)
    await store.start()
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    await store.append_events(
        [ev("a", "log_appended", 2, lines=["x", "y"], channel="c", channel_offset=0)]
    )
    await store.close()
    await engine.dispose()

    engine = create_engine(db_url)
    store = Store(engine)
    await store.start()
    try:
        # The channel cursor survived: the resend of both lines plus one new stores one line.
        await store.append_events(
            [ev("a", "log_appended", 3, lines=["x", "y", "z"], channel="c", channel_offset=0)]
        )
        events = await assert_consistent(store, "a")
        assert len(events) == 3
        assert [line.text for line in await store.get_log_lines("a", 1, 10)] == ["x", "y", "z"]
        async with engine.connect() as conn:
            stored = (await conn.execute(select(events_table.c.seq))).scalars().all()
            assert sorted(stored) == [1, 2, 3]
            assert len((await conn.execute(select(log_lines.c.seq))).all()) == 3
    finally:
        await store.close()
        await engine.dispose()


async def test_verify_finds_nothing_on_a_healthy_store_and_catches_tampering(
    store: Store, engine: AsyncEngine
) -> None:
    from sqlalchemy import update

    from ledgerflow.coordinator.store import verify
    from ledgerflow.coordinator.store._schema import runs

    for run_id in ("a", "b"):
        await store.start_run(StartRunSpec(workflow_name="wf", run_id=run_id))
        await store.append_events(
            [ev(run_id, "step_started", 2, step_id="s"), ev(run_id, "log_appended", 3, lines=["x"])]
        )
    assert await verify(engine) == (2, [])

    tampered = await store.get_run("b")
    tampered.status = pb.RUN_STATUS_COMPLETED
    async with engine.begin() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.run_id == "b")
            .values(snapshot=tampered.SerializeToString(deterministic=True), last_seq=9)
        )
    checked, found = await verify(engine)
    assert checked == 2
    assert [(m.run_id, m.what) for m in found] == [("b", "seqs"), ("b", "snapshot")]
    assert found[1].detail == "differs in status"
    assert (await verify(engine, ["a"])) == (1, [])
    assert [m.what for m in (await verify(engine, ["ghost"]))[1]] == ["run"]

    # Isolation filters on the namespace column: it must agree with the ledger.
    async with engine.begin() as conn:
        await conn.execute(update(runs).where(runs.c.run_id == "a").values(namespace="other"))
    assert [(m.what, m.detail) for m in (await verify(engine, ["a"]))[1]] == [
        ("namespace", "column says 'other', the ledger 'default'")
    ]


async def test_retries_of_successful_requests_succeed_after_the_run_ended(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    signal_seq, _ = await store.signal_run(
        "a", name="go", payload=None, request_id="once", identity="me"
    )
    cancel_seq, _ = await store.cancel_run("a", reason="stop", identity="me")
    await store.append_events([ev("a", "run_cancelled", 9)])
    assert await store.cancel_run("a", reason="stop", identity="me") == (cancel_seq, True)
    assert await store.signal_run(
        "a", name="go", payload=None, request_id="once", identity="me"
    ) == (signal_seq, True)
    with pytest.raises(FailedPreconditionError):
        await store.signal_run("a", name="go", payload=None, request_id="new", identity="me")

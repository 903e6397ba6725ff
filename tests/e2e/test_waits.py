"""End to end: durable timers and signals through real coordinator and worker processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from ledgerflow.client import Client
from ledgerflow.errors import FailedPreconditionError, RunCancelledError, RunTimedOutError
from ledgerflow.ledger import payload_value
from ledgerflow.ledger._time import to_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import BIN, LEASE, free_port, runs_of, server, worker
from tests.pg_cluster import PgCluster

STEPS_APP = Path(__file__).with_name("steps_app.py")


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh Postgres database (for what only Postgres offers: several coordinators)."""
    if not pg_cluster.running:
        pg_cluster.start()
    return pg_cluster.create_database(f"t_waits_{time.time_ns()}")


async def waiting_on(client: Client, run_id: str) -> pb.RunSnapshot:
    """Wait (on the snapshot stream) until the run waits with an open waitpoint."""
    async with asyncio.timeout(120):  # a bug must fail the test, not hang it
        async for snap in client.watch_run(run_id):
            if snap.status == pb.RUN_STATUS_WAITING and snap.open_waitpoints:
                return snap
    raise AssertionError(f"run {run_id} ended without waiting")


async def waiting_for(client: Client, run_id: str, waitpoint_id: str) -> pb.RunSnapshot:
    """Wait (on the snapshot stream) until the run waits on ``waitpoint_id``."""
    async with asyncio.timeout(120):  # a bug must fail the test, not hang it
        async for snap in client.watch_run(run_id):
            if any(w.waitpoint_id == waitpoint_id for w in snap.open_waitpoints):
                return snap
    raise AssertionError(f"run {run_id} ended without waiting on {waitpoint_id}")


async def resolutions(client: Client, run_id: str) -> list[pb.WaitpointResolved]:
    return [
        e.waitpoint_resolved
        async for e in client.iter_events(run_id)
        if e.HasField("waitpoint_resolved")
    ]


async def test_a_timer_survives_a_coordinator_that_was_down_when_it_came_due(
    db_url: str, app_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address):
        with server(db_url, port, *LEASE) as coordinator:
            client = await Client.connect(address)
            await client.start("sleeper", {"dir": str(marks), "seconds": 1.0}, run_id="nap")
            snap = await waiting_on(client, "nap")
            (timer,) = snap.open_waitpoints
            assert (timer.waitpoint_id, timer.kind) == ("sleep#1", pb.WAITPOINT_KIND_TIMER)
            coordinator.kill()
            coordinator.wait()
            await client.close()
        # Down until the timer is due: what is under test is the passing of time itself.
        await asyncio.sleep(max(0.0, to_nanos(timer.deadline_time) / 1e9 - time.time()))
        with server(db_url, port, *LEASE):
            client = await Client.connect(address)
            try:
                slept = await client.get_handle("nap").result(timeout=60)
                (fired,) = await resolutions(client, "nap")
            finally:
                await client.close()
    assert slept >= 1.0  # ctx.now() after the sleep is the time the timer fired
    assert (fired.waitpoint_id, fired.timed_out) == ("sleep#1", False)
    assert runs_of(marks, "before") == 1
    assert runs_of(marks, "after") == 1


async def test_signals_sent_before_the_wait_wait_in_the_inbox_each_consumed_once(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            await client.start("approvals", {"dir": str(marks), "count": 2}, run_id="early")
            # Both arrive while the first step still runs: nobody waits for them yet.
            await client.signal_run("early", "approve", {"n": 1})
            await client.signal_run("early", "approve", {"n": 2})
            (marks / "gate").touch()
            result = await client.get_handle("early").result(timeout=60)
            resolved = await resolutions(client, "early")
        finally:
            await client.close()
    assert result == [{"n": 1}, {"n": 2}]  # oldest first, each once
    assert [(r.waitpoint_id, r.source) for r in resolved] == [
        ("signal:approve#1", pb.WAITPOINT_RESOLUTION_SOURCE_INBOX),
        ("signal:approve#2", pb.WAITPOINT_RESOLUTION_SOURCE_INBOX),
    ]
    assert len({r.matched_seq for r in resolved}) == 2
    assert runs_of(marks, "prepare") == 1
    assert runs_of(marks, "publish") == 1


async def test_a_signal_sent_while_the_run_waits_wakes_it(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    (marks / "gate").touch()
    with worker(app_dir, address, "--max-concurrent-tasks", "1"):
        client = await Client.connect(address)
        try:
            await client.start("approvals", {"dir": str(marks), "count": 1}, run_id="late")
            snap = await waiting_on(client, "late")
            assert [(w.waitpoint_id, w.kind, w.name) for w in snap.open_waitpoints] == [
                ("signal:approve#1", pb.WAITPOINT_KIND_SIGNAL, "approve")
            ]
            # Waiting holds no worker slot: another run goes through the only one.
            assert await (await client.start("sum", 3)).result(timeout=60) == 3
            await client.signal_run("late", "approve", "yes")
            assert await client.get_handle("late").result(timeout=60) == ["yes"]
            (resolved,) = await resolutions(client, "late")
            with pytest.raises(FailedPreconditionError):
                await client.signal_run("late", "approve", "again")
        finally:
            await client.close()
    assert resolved.source == pb.WAITPOINT_RESOLUTION_SOURCE_LIVE
    assert payload_value(resolved.payload) == "yes"
    assert runs_of(marks, "prepare") == 1


async def test_a_signal_wait_times_out_into_an_error_the_body_can_catch(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    (marks / "gate").touch()
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            handle = await client.start(
                "approvals", {"dir": str(marks), "count": 1, "timeout": 0.5}, run_id="slow"
            )
            result = await handle.result(timeout=60)
            (resolved,) = await resolutions(client, "slow")
            snap = await client.get_run("slow")
        finally:
            await client.close()
    assert result == {"timed_out": "signal:approve#1", "got": []}
    assert resolved.timed_out
    assert not snap.open_waitpoints
    assert runs_of(marks, "publish") == 0


async def test_sleeping_runs_hold_no_worker_slot(db_url: str, app_dir: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    count = 1000
    # Default (10 s) leases: a busy machine must not expire one and rerun a step.
    with server(db_url, port), worker(app_dir, address, "--max-concurrent-tasks", "2"):
        client = await Client.connect(address)
        try:
            for i in range(count):
                await client.start(
                    "sleeper", {"dir": str(marks), "seconds": 3600}, run_id=f"sleep-{i}"
                )
            for i in range(count):
                await waiting_on(client, f"sleep-{i}")
            # A thousand runs wait, the worker has two slots: both are free.
            assert await (await client.start("sum", 4)).result(timeout=300) == 6
            waiting = [
                r.run_id async for r in client.iter_runs(statuses=["waiting"], page_size=500)
            ]
        finally:
            await client.close()
    assert len(waiting) == count
    assert runs_of(marks, "before") == count
    assert runs_of(marks, "after") == 0


async def test_two_coordinators_never_fire_one_timer_twice(pg_url: str, app_dir: Path) -> None:
    ports = free_port(), free_port()
    marks = app_dir / "marks"
    count = 20
    with (
        server(pg_url, ports[0], *LEASE),
        server(pg_url, ports[1], *LEASE),
        worker(app_dir, f"127.0.0.1:{ports[0]}"),
        worker(app_dir, f"127.0.0.1:{ports[1]}"),
    ):
        client = await Client.connect(f"127.0.0.1:{ports[0]}")
        try:
            handles = [
                await client.start("sleeper", {"dir": str(marks), "seconds": 0.3}, run_id=f"t{i}")
                for i in range(count)
            ]
            await asyncio.gather(*(h.result(timeout=120) for h in handles))
            fired = [len(await resolutions(client, f"t{i}")) for i in range(count)]
        finally:
            await client.close()
    assert fired == [1] * count
    assert runs_of(marks, "after") == count


async def test_a_run_cancelled_while_it_sleeps_ends_cancelled_at_once(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            await client.start("sleeper", {"dir": str(marks), "seconds": 3600}, run_id="zzz")
            await waiting_on(client, "zzz")
            await client.cancel_run("zzz", reason="not today")
            with pytest.raises(RunCancelledError):
                await client.get_handle("zzz").result(timeout=60)
            snap = await client.get_run("zzz")
        finally:
            await client.close()
    assert snap.status == pb.RUN_STATUS_CANCELLED
    assert not snap.open_waitpoints  # discarded with the run
    assert runs_of(marks, "after") == 0


@contextmanager
def step_worker(app_dir: Path, address: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``ledgerflow worker steps_app:worker`` (kind ``upper``) against ``address``."""
    shutil.copy(STEPS_APP, app_dir / "steps_app.py")
    proc = subprocess.Popen(
        [str(BIN), "worker", "steps_app:worker"],
        cwd=app_dir,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LEDGERFLOW_ADDRESS": address},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


async def test_a_step_runs_on_a_worker_of_its_kind_with_its_logs_in_the_run(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    with worker(app_dir, address, "--max-concurrent-tasks", "1"), step_worker(app_dir, address):
        client = await Client.connect(address)
        try:
            result = await (await client.start("remote", "hello", run_id="rs")).result(timeout=60)
            snap = await client.get_run("rs")
            lines = [(line.channel, line.text) async for line in client.tail_logs("rs")]
            events = [e async for e in client.iter_events("rs")]
        finally:
            await client.close()
    assert result["loud"] == "HELLO"
    assert result["failure"] == "cannot shout boom"
    shout = snap.steps["shout"]
    assert (shout.status, shout.worker_kind) == (pb.STEP_STATUS_COMPLETED, "upper")
    assert shout.progress.message == "shouted"
    assert snap.steps["shout#2"].status == pb.STEP_STATUS_FAILED
    assert ("step:shout:1", "[info] upper hello (attempt 1)") in lines
    assert ("step:shout#2:1", "[info] upper boom (attempt 1)") in lines
    started = [e.step_started for e in events if e.HasField("step_started")]
    assert [(s.step_id, s.attempt) for s in started] == [("shout", 1), ("shout#2", 1)]
    assert all(s.worker_id and s.worker_id != "" for s in started)
    kinds = [e.WhichOneof("payload") for e in events]
    # The body waited twice without a slot: scheduled, waiting, started, result, resolved.
    assert kinds.count("run_waiting") == 2
    assert kinds.count("step_scheduled") == 2


async def test_a_run_past_its_execution_timeout_compensates_and_ends_timed_out(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            handle = await client.start(
                "overdue", str(marks), run_id="late", execution_timeout=timedelta(seconds=1)
            )
            with pytest.raises(RunTimedOutError):
                await handle.result(timeout=60)
            snap = await client.get_run("late")
            events = [e async for e in client.iter_events("late")]
        finally:
            await client.close()
    assert snap.status == pb.RUN_STATUS_TIMED_OUT
    assert not snap.open_waitpoints
    (ended,) = [e.run_timed_out for e in events if e.HasField("run_timed_out")]
    assert ended.compensation == pb.COMPENSATION_OUTCOME_COMPENSATED
    assert runs_of(marks, "book") == 1
    assert runs_of(marks, "unbook") == 1


async def test_child_runs_return_their_result_or_fail_in_the_parent(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address, "--max-concurrent-tasks", "1"):
        client = await Client.connect(address)
        try:
            result = await (await client.start("parent", str(marks), run_id="p")).result(timeout=60)
            children = [await client.get_run(c) for c in result["children"]]
        finally:
            await client.close()
    assert result["total"] == 6
    assert result["failure"] == ["FAILED", "step 'ship' failed: RuntimeError: ship failed"]
    assert [c.parent_run_id for c in children] == ["p", "p"]
    assert [c.run_id for c in children] == ["p.child-1", "p.child-2"]
    assert [c.status for c in children] == [pb.RUN_STATUS_COMPLETED, pb.RUN_STATUS_FAILED]
    # The failed child compensated its own steps, once.
    assert runs_of(marks, "unbook") == 1


async def test_cancelling_a_waiting_parent_cancels_its_child_and_both_compensate(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            await client.start("grandparent", str(marks), run_id="gp")
            await waiting_for(client, "gp", "child:sleepy-child")
            await waiting_for(client, "sleepy-child", "sleep#1")
            await client.cancel_run("gp", reason="changed my mind")
            with pytest.raises(RunCancelledError):
                await client.get_handle("gp").result(timeout=60)
            with pytest.raises(RunCancelledError):
                await client.get_handle("sleepy-child").result(timeout=60)
        finally:
            await client.close()
    assert runs_of(marks, "release") == 1  # the parent's compensation
    assert runs_of(marks, "unbook") == 1  # the child's


async def test_a_step_that_needs_a_human_parks_the_run_until_a_signal_decides(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    with worker(app_dir, address), step_worker(app_dir, address):
        client = await Client.connect(address)
        try:
            await client.start("refund", 42.0, run_id="big")
            snap = await waiting_for(client, "big", "human:review")
            assert snap.steps["review"].progress.message == (
                "needs a human: approve the refund of 42.0 EUR"
            )
            await client.signal_run("big", "review", {"approved": False, "by": "ana"})
            decided = await client.get_handle("big").result(timeout=60)
            small = await (await client.start("refund", 5.0)).result(timeout=60)
            final = await client.get_run("big")
        finally:
            await client.close()
    assert decided == {"approved": False, "by": "ana"}
    assert small == {"approved": True, "by": "policy"}
    assert final.steps["review"].status == pb.STEP_STATUS_COMPLETED
    assert not final.open_waitpoints


async def test_remote_steps_time_out_unstarted_or_running_too_long(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    with worker(app_dir, address), step_worker(app_dir, address):
        client = await Client.connect(address)
        try:
            codes = await (await client.start("deadlines", run_id="dl")).result(timeout=60)
            snap = await client.get_run("dl")
        finally:
            await client.close()
    assert codes == ["SCHEDULE_TO_START_TIMEOUT", "STEP_TIMEOUT"]
    assert snap.steps["paint"].status == pb.STEP_STATUS_FAILED
    assert snap.steps["shout"].status == pb.STEP_STATUS_FAILED
    assert not snap.open_waitpoints

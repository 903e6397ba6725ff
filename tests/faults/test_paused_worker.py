"""A worker paused past its lease (SIGSTOP), then resumed: its late messages are fenced off."""

from __future__ import annotations

import signal
from pathlib import Path

from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import LEASE, free_port, server
from tests.faults.harness import (
    assert_sound,
    connected,
    marks,
    results,
    run_starts,
    step_running,
    until,
    until_invocation,
    until_logged,
    until_marked,
    worker,
)


async def test_a_worker_resumed_after_its_lease_ended_is_fenced(pg_url: str, app_dir: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    directory = app_dir / "marks"
    with server(pg_url, port, *LEASE):
        async with connected(address) as client:
            await client.start("gated", str(directory), run_id="paused")
            # One task at a time: a has no free capacity, so only the fencing is tested
            # here; with free capacity, see the test below.
            with worker(app_dir, address, "--max-concurrent-tasks", "1", log="a.log") as a:
                await until(client, "paused", step_running("blocked"))
                await until_marked(directory, "blocked", 1)
                a.send_signal(signal.SIGSTOP)  # no heartbeats: the lease runs out
                with worker(app_dir, address, log="b.log"):
                    second = await until_invocation(client, "paused", 2)
                    await until_marked(directory, "blocked", 2)  # b replays into the step
                    # Both copies of "blocked" may now finish; only b is running.
                    (directory / "blocked.gate").touch()
                    (snap,) = await results(client, ["paused"])
                    # a wakes holding epoch 1: its step's batch, its result or its
                    # heartbeat is refused, and it drops the task.
                    a.send_signal(signal.SIGCONT)
                    await until_logged(app_dir / "a.log", "STALE_LEASE")
            ledgers = await assert_sound(client, pg_url, ["paused"])
    events = ledgers["paused"]
    starts = [e for e in events if e.HasField("run_started")]
    assert [e.run_started.invocation for e in starts] == [1, 2]
    assert second.runtime.worker_id != starts[0].run_started.runtime.worker_id
    assert snap.status == pb.RUN_STATUS_COMPLETED
    # After the second dispatch, everything in the ledger came from b.
    later = [e for e in events if e.seq > starts[1].seq]
    assert [e.step_started.worker_id for e in later if e.HasField("step_started")] == [
        second.runtime.worker_id
    ] * 2
    assert [e.step_completed.step_id for e in events if e.HasField("step_completed")] == [
        "first",
        "blocked",
        "last",
    ]
    assert sum(e.HasField("run_completed") for e in events) == 1
    assert {n: marks(directory, n) for n in ("first", "blocked", "last")} == {
        "first": 1,
        "blocked": 2,  # in flight when a stopped: the only step run twice
        "last": 1,
    }


async def test_an_expired_task_goes_to_another_worker_not_back_to_the_stopped_one(
    pg_url: str, app_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    directory = app_dir / "marks"
    with server(pg_url, port, *LEASE):
        async with connected(address) as client:
            await client.start("gated", str(directory), run_id="paused")
            # Free capacity: a stopped session still counted live would be given its own
            # expired task back, again and again, while its stream stays open.
            with worker(app_dir, address, log="a.log") as a:
                await until(client, "paused", step_running("blocked"))
                await until_marked(directory, "blocked", 1)
                a.send_signal(signal.SIGSTOP)
                with worker(app_dir, address, log="b.log"):
                    second = await until_invocation(client, "paused", 2)
                    first = (await run_starts(client, "paused"))[0]
                    assert second.runtime.worker_id != first.runtime.worker_id
                    (directory / "blocked.gate").touch()
                    (snap,) = await results(client, ["paused"])
                    a.send_signal(signal.SIGCONT)
                    await until_logged(app_dir / "a.log", "STALE_LEASE")
            ledgers = await assert_sound(client, pg_url, ["paused"])
    assert snap.status == pb.RUN_STATUS_COMPLETED
    starts = [e.run_started.invocation for e in ledgers["paused"] if e.HasField("run_started")]
    assert starts == [1, 2]
    assert marks(directory, "blocked") == 2

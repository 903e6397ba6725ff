"""The coordinator dies mid-batch: after receiving a batch but before committing it, and after
committing it but before acknowledging it (``LEDGERFLOW_FAULT``, ``CrashPoint`` in
api/_worker_service.py). Restarted without the fault, it gets every unacknowledged batch again
from the workers: the first kind is appended then, the second is acknowledged as a duplicate
and not appended twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import json_format

from ledgerflow.coordinator.store import create_engine
from ledgerflow.coordinator.store._sql_events import find_requests, page_events
from ledgerflow.coordinator.store._tasks import batch_request_id
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import worker_service_pb2 as wpb
from tests.e2e.test_workflows import free_port
from tests.faults.harness import (
    DEADLINE,
    assert_sound,
    connected,
    coordinator,
    marks,
    results,
    worker,
)

RUNS = 4
STEPS = 30
# Leases far longer than the restart: the workers keep their tasks, reconnect with them in
# held_tasks and resend every batch not acknowledged. No task moves, so nothing replays.
LEASE = ["--lease-seconds", "30", "--heartbeat-seconds", "0.2"]
# Past the first steps of every run (each run writes at least one batch per step), well
# before the last.
CRASH_AT = 25


@dataclass(frozen=True)
class Crash:
    """What the dying coordinator wrote: the batch it died at, and the run's last seq then."""

    batch: wpb.EventBatch
    committed_seq: int | None

    @property
    def run_id(self) -> str:
        return self.batch.events[0].run_id  # filled in by the coordinator before the crash

    @property
    def request_id(self) -> str:
        return batch_request_id(self.batch.task_id, self.batch.lease_epoch, self.batch.batch_no)

    def occurrences(self, ledger: list[pb.LedgerEvent]) -> list[list[int]]:
        """For each event of the batch, the seqs of the ledger's events with its payload."""
        return [
            [e.seq for e in ledger if _payload(e) == _payload(sent)] for sent in self.batch.events
        ]


def _payload(event: pb.LedgerEvent) -> tuple[str, bytes]:
    """The event's payload as the worker wrote it (ingestion adds a log batch's first_seq)."""
    copy = pb.LedgerEvent()
    copy.CopyFrom(event)
    if copy.HasField("log_appended"):
        copy.log_appended.ClearField("first_seq")
    case = copy.WhichOneof("payload")
    assert case is not None
    return case, getattr(copy, case).SerializeToString(deterministic=True)


def crash_report(log: Path, point: str) -> Crash:
    match = re.search(
        rf"^LEDGERFLOW_FAULT: crash-{point} at event batch {CRASH_AT}"
        r"(?: committed_seq=(\d+))? batch=(.*)$",
        log.read_text(),
        re.MULTILINE,
    )
    assert match is not None, log.read_text()
    batch = json_format.Parse(match.group(2), wpb.EventBatch())
    assert batch.events, batch
    committed = match.group(1)
    return Crash(batch, int(committed) if committed is not None else None)


async def stored(
    db_url: str, run_id: str, request_id: str
) -> tuple[list[pb.LedgerEvent], tuple[int, int] | None]:
    """The run's ledger as committed, and the seq range ``request_id`` appended (None if none)."""
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            events = await page_events(conn, run_id, 0, 100_000)
            ranges = await find_requests(conn, [(run_id, request_id)])
    finally:
        await engine.dispose()
    return events, ranges.get((run_id, request_id))


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
async def test_the_coordinator_dies_mid_batch_and_nothing_is_lost_or_doubled(
    pg_url: str, app_dir: Path, point: str
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    directory = app_dir / "marks"
    run_ids = [f"chatty-{i}" for i in range(RUNS)]
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(
            coordinator(
                pg_url, port, *LEASE, log=app_dir / "first.log", fault=f"crash-{point}:{CRASH_AT}"
            )
        )
        async with connected(address) as client:
            for run_id in run_ids:
                args = {"dir": str(directory), "tag": run_id, "steps": STEPS}
                await client.start("chatty", args, run_id=run_id)
        stack.enter_context(worker(app_dir, address))
        stack.enter_context(worker(app_dir, address))
        assert await asyncio.to_thread(first.wait, DEADLINE) == 137
        crash = crash_report(app_dir / "first.log", point)
        # What the dead coordinator had committed.
        ledger, appended = await stored(pg_url, crash.run_id, crash.request_id)
        if point == "before-commit":
            assert appended is None
            assert crash.occurrences(ledger) == [[] for _ in crash.batch.events]
        else:
            assert crash.committed_seq is not None
            first_seq = crash.committed_seq - len(crash.batch.events) + 1
            assert appended == (first_seq, crash.committed_seq)
            assert crash.occurrences(ledger) == [
                [seq] for seq in range(first_seq, crash.committed_seq + 1)
            ]
        stack.enter_context(coordinator(pg_url, port, *LEASE, log=app_dir / "second.log"))
        async with connected(address) as client:
            snaps = await results(client, run_ids)
            ledgers = await assert_sound(client, pg_url, run_ids)
            logs = {r: [line.text async for line in client.tail_logs(r)] for r in run_ids}
        _, appended_after = await stored(pg_url, crash.run_id, crash.request_id)
    for run_id, snap in zip(run_ids, snaps, strict=True):
        assert snap.status == pb.RUN_STATUS_COMPLETED, run_id
        events = ledgers[run_id]
        # The workers kept their tasks across the crash: one dispatch per run, no replay.
        assert [e.run_started.invocation for e in events if e.HasField("run_started")] == [1]
        completed = [e.step_completed.step_id for e in events if e.HasField("step_completed")]
        assert completed == [f"s{i}" for i in range(STEPS)], run_id
        assert logs[run_id] == [f"[info] step {i} done" for i in range(STEPS)], run_id
        assert [marks(directory, f"{run_id}.s{i}") for i in range(STEPS)] == [1] * STEPS
    # The batch the coordinator died at is in the ledger once, where its append put it.
    assert appended_after is not None
    first_seq, last_seq = appended_after
    assert crash.occurrences(ledgers[crash.run_id]) == [
        [seq] for seq in range(first_seq, last_seq + 1)
    ]
    resent_as_duplicate = (
        f"event batch {crash.batch.batch_no} of task {crash.batch.task_id} "
        f"(epoch {crash.batch.lease_epoch}) was appended before"
    )
    second_log = (app_dir / "second.log").read_text()
    if point == "before-commit":
        # Never committed: the worker's resend was its first append.
        assert resent_as_duplicate not in second_log
    else:
        # Committed, never acknowledged: the worker resent it, and the restarted
        # coordinator acknowledged it without appending it again.
        assert appended_after == appended
        assert resent_as_duplicate in second_log

"""Test fixtures for the workflow engine: a ledger in memory, run by the real ledger core.

:class:`MemoryLedger` is the coordinator's append path without the network or the
database: every appended event is validated (``validate_event``), given a gapless
``seq``, run through positional log ingestion (``ingest_log_batch``) and folded into
the journal (``apply_journal_event``) and the snapshot (``apply_event``). A crash is
simulated by making the N-th append raise, before or after it commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ledgerflow.ledger import (
    LogRetention,
    RunLogState,
    apply_event,
    apply_journal_event,
    empty_journal,
    empty_snapshot,
    ingest_log_batch,
    json_payload,
    validate_event,
)
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import journal_pb2, workflow_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.workflow import WorkflowDefinition, WorkflowExecution

RUN_START_NS = 1_700_000_000 * 1_000_000_000


class SinkRefusedError(Exception):
    """What a crashing MemoryLedger raises (stands for a lost connection or a stale lease)."""


class FakeClock:
    """A wall clock that advances one millisecond per reading."""

    def __init__(self, start_ns: int = RUN_START_NS + 1_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        self.now_ns += 1_000_000
        return self.now_ns


class FakeSleep:
    """Records backoff sleeps and returns at once (after one loop tick)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


@dataclass
class MemoryLedger:
    """One run's ledger in memory; also the EventSink handed to the engine.

    Attributes:
        run_id: The run.
        fail_at: Zero-based index of the append call that raises (None: never).
        fail_mode: ``before`` the batch commits, or ``after`` (committed, ack lost).
    """

    run_id: str = "run-1"
    fail_at: int | None = None
    fail_mode: Literal["before", "after"] = "before"
    events: list[pb.LedgerEvent] = field(default_factory=list)
    calls: list[list[pb.LedgerEvent]] = field(default_factory=list)
    journal: journal_pb2.JournalSlice = field(default_factory=empty_journal)
    snapshot: pb.RunSnapshot = field(default_factory=pb.RunSnapshot)
    log_state: RunLogState = field(default_factory=RunLogState)
    lines: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.snapshot = empty_snapshot(self.run_id)

    async def append(self, events: Sequence[pb.LedgerEvent]) -> None:
        index = len(self.calls)
        self.calls.append(list(events))
        if self.fail_at is not None and index >= self.fail_at and self.fail_mode == "before":
            raise SinkRefusedError(f"append #{index} refused")
        # Appends of one call commit together, like one EventBatch in one transaction.
        for event in events:
            validate_event(event)
            assert event.run_id == self.run_id
            assert event.seq == 0
            assert event.source == pb.EVENT_SOURCE_WORKER
        for event in events:
            self.commit(event)
        if self.fail_at is not None and index >= self.fail_at:
            raise SinkRefusedError(f"append #{index} committed, its ack lost")

    def commit(self, event: pb.LedgerEvent) -> None:
        """Append one event as the coordinator would (no validation of the producer)."""
        stored = pb.LedgerEvent()
        stored.CopyFrom(event)
        if stored.WhichOneof("payload") == "log_appended":
            ingested = ingest_log_batch(stored, self.log_state, LogRetention())
            self.lines.extend((line.channel, line.text) for line in ingested.stored)
            if ingested.event is None:
                return
            stored = ingested.event
        stored.seq = len(self.events) + 1
        self.events.append(stored)
        apply_journal_event(self.journal, stored)
        apply_event(self.snapshot, stored)

    def healthy(self) -> MemoryLedger:
        """Stop failing: the next execution (a new worker) appends normally."""
        self.fail_at = None
        return self

    def of_type(self, case: str) -> list[pb.LedgerEvent]:
        """The committed events of one payload case, in ledger order."""
        return [e for e in self.events if e.WhichOneof("payload") == case]

    def kinds(self) -> list[str]:
        """The payload case of every committed event, in ledger order."""
        return [str(e.WhichOneof("payload")) for e in self.events]

    def body_lines(self) -> list[str]:
        """The stored lines of the workflow body's channel."""
        return [text for channel, text in self.lines if channel == "workflow"]


def make_task(
    ledger: MemoryLedger,
    workflow_input: Any = None,
    *,
    invocation: int = 1,
    cancel_requested: bool = False,
    cancel_reason: str = "",
    raw_input: Any = None,
) -> workflow_pb2.WorkflowTask:
    """A workflow task for the ledger's run, carrying the journal reduced so far."""
    task = workflow_pb2.WorkflowTask(
        task_id=f"task-{invocation}",
        lease_epoch=invocation,
        run_id=ledger.run_id,
        workflow_name="test",
        invocation=invocation,
        cancel_requested=cancel_requested,
        cancel_reason=cancel_reason,
    )
    if raw_input is not None:
        task.input.CopyFrom(raw_input)
    elif workflow_input is not None:
        task.input.CopyFrom(json_payload(workflow_input))
    task.journal.CopyFrom(ledger.journal)
    set_nanos(task.run_start_time, RUN_START_NS)
    return task


@dataclass
class Runner:
    """Runs a definition against one MemoryLedger, invocation after invocation."""

    definition: WorkflowDefinition[Any, Any]
    ledger: MemoryLedger = field(default_factory=MemoryLedger)
    workflow_input: Any = None
    clock: FakeClock = field(default_factory=FakeClock)
    sleep: FakeSleep = field(default_factory=FakeSleep)
    invocations: int = 0

    def execution(
        self, *, cancel_requested: bool = False, cancel_reason: str = ""
    ) -> WorkflowExecution:
        self.invocations += 1
        task = make_task(
            self.ledger,
            self.workflow_input,
            invocation=self.invocations,
            cancel_requested=cancel_requested,
            cancel_reason=cancel_reason,
        )
        return WorkflowExecution(
            self.definition,
            task,
            self.ledger,
            worker_id="worker-a",
            clock=self.clock,
            sleep=self.sleep,
        )

    async def run(
        self, *, cancel_requested: bool = False, cancel_reason: str = ""
    ) -> workflow_pb2.WorkflowTaskResult:
        execution = self.execution(cancel_requested=cancel_requested, cancel_reason=cancel_reason)
        return await execution.run()


def outcome_name(result: workflow_pb2.WorkflowTaskResult) -> str:
    """``completed``, ``failed``, ... for a result."""
    return (
        workflow_pb2.WorkflowOutcome.Name(result.outcome).removeprefix("WORKFLOW_OUTCOME_").lower()
    )


def comparable_result(result: workflow_pb2.WorkflowTaskResult) -> dict[str, Any]:
    """The parts of a result that must not depend on crashes, timing or stack traces."""
    return {
        "outcome": outcome_name(result),
        "output": result.output.data if result.HasField("output") else None,
        "error": (result.error.type, result.error.message) if result.HasField("error") else None,
        "error_cause": (
            (result.error.cause.type, result.error.cause.message)
            if result.error.HasField("cause")
            else None
        ),
        "compensations": [
            (c.step_id, pb.CompensationStatus.Name(c.status), c.error.message)
            for c in result.compensations
        ],
        "metadata_updates": [
            m.SerializeToString(deterministic=True) for m in result.metadata_updates
        ],
    }


def comparable_journal(journal: journal_pb2.JournalSlice) -> dict[str, Any]:
    """The parts of a journal that must not depend on crashes or timing."""
    return {
        "steps": {
            step_id: (
                e.name,
                e.ordinal,
                e.attempt,
                journal_pb2.StepResultStatus.Name(e.status),
                e.output.data,
                (e.error.type, e.error.message),
            )
            for step_id, e in journal.step_results.items()
        },
        "pending": sorted(journal.pending_steps),
        "compensations": {
            step_id: (pb.CompensationStatus.Name(c.status), c.error.message)
            for step_id, c in journal.compensations_run.items()
        },
        "metadata": {
            k: v.SerializeToString(deterministic=True) for k, v in journal.metadata_state.items()
        },
    }


Counter = dict[str, int]


def counting(calls: Counter, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a sync function so every real call is counted under ``name``."""

    def wrapper(*args: Any) -> Any:
        calls[name] = calls.get(name, 0) + 1
        return fn(*args)

    return wrapper

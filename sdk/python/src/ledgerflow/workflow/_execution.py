"""The engine: run one workflow task from the top against its journal.

:class:`WorkflowExecution` runs a body for one ``WorkflowTask`` and returns the
``WorkflowTaskResult``. It performs no I/O of its own: events go to the worker's
:class:`~ledgerflow.workflow.EventSink`, time comes from an injectable clock and
retry backoff from an injectable sleep. It ports the reference executor
(``shared/reference/003_*.txt``, ``executor.ts``): journal replay, deterministic
clock and random stream, control-flow signals, LIFO compensation with per-step
reports, and its outcome table.

Who appends what
----------------
The engine appends, through the sink: ``step_started``, ``step_completed``,
``step_failed`` (with ``will_retry``/``next_attempt_time`` between attempts),
``compensation_started/completed/failed``, ``log_appended``, ``step_progress``,
``checkpoint_recorded`` and ``metadata_updated``. It never appends a ``run_*``
event. The coordinator derives the run's terminal event from the
``WorkflowTaskResult`` and appends it under the task's lease, atomically with the
task's completion, after a ``metadata_updated`` for ``result.metadata_updates``:

==========================  ======================================================
outcome                     terminal event (recommended)
==========================  ======================================================
COMPLETED                   ``run_completed(result=output)``
FAILED                      ``run_failed(error)``
COMPENSATED                 ``run_failed(error, compensation=COMPENSATED)``; error
                            unset after ``ctx.compensate()``
COMPENSATION_FAILED         ``run_failed(error, compensation=COMPENSATION_FAILED)``
CANCELLED                   ``run_cancelled(error=reason, compensation=...)``, the
                            compensation outcome read off ``result.compensations``
WAITING                     ``run_waiting(waitpoint_ids)``; ``waitpoints`` lists the
                            registrations (the coordinator records and resolves them)
==========================  ======================================================

``run_started`` is the dispatcher's (it knows the worker). The engine returns only
after every event it appended or posted is committed, so the terminal event always
follows them.

Replay and non-determinism
--------------------------
Each ``ctx.step`` call claims the next ordinal (from 1) when it is *called* and a
step id (the name, ``#n`` for the n-th call with that name). A step whose id is in
``journal.step_results`` returns its recorded output (or raises its recorded
error as :class:`~ledgerflow.errors.StepFailedError`) without running. If the
ledger recorded a different step at that ordinal, the same step at another
ordinal, or a step the body no longer reaches, or a recorded output no longer
decodes, the engine raises :class:`~ledgerflow.errors.NonDeterminismError` from
:meth:`WorkflowExecution.run`: the **task** fails, not the run, and no further
event is appended (no compensation runs). The worker hands the task back
(``TaskRelease`` with the error as reason) so the run continues once a fixed
deployment replays it, as Temporal fails a workflow task. Failing the run instead
would make a bad deploy destroy every run it touches. A body that catches the
error does not escape it: it is raised again at every later ``ctx`` call and from
``run()``.

Steps must be issued in a deterministic order. ``asyncio.gather`` over
``ctx.step`` calls is (ordinals are claimed at call time, in argument order);
concurrent branches that each issue several steps are not when their order
depends on step timing, and replay reports it as non-determinism where the
ordinals disagree.

Crashes, attempts and retries
-----------------------------
Write-ahead: ``step_started`` is handed to the sink before ``fn`` runs (without
waiting: the result commit below is what the body waits for, which saves one
round trip per step), and the body continues only after ``step_completed`` or
the final ``step_failed`` is committed. A crash therefore loses at most the
steps in flight. A step the journal holds as pending (started, no result) runs
again *under the same attempt number*: the attempt never ended, so it does not
use up the retry policy (a crash is not the step's failure; the snapshot keeps
showing it as attempt n). The price: a step that crashes its worker every time is
run again by every new worker; only the lease's redelivery bounds it. A step
pending with ``will_retry`` runs its next attempt once ``next_attempt_time`` has
passed. Backoff is an in-process sleep that holds the task (for long waits between
attempts, catch the failure and ``ctx.sleep``: a durable timer holds nothing).

Exactly-once for what the body emits
------------------------------------
The sink is ordered, so once the journal shows a step started, every event the
body handed over before it is committed. The engine uses this to keep body-level
emissions exactly once across replays:

- metadata mutations and checkpoints are held and travel in the same append as
  the next step's ``step_started``; when replay reaches a step the journal
  already has, the held ones are dropped (they were committed with it).
  Mutations still held when the body ends go into ``result.metadata_updates`` and
  are committed with the result.
- log lines (channel ``workflow``) carry ``channel_offset``, the count of body
  lines before them, so lines a replay sends again are dropped positionally by
  ingestion; while replaying they are held like the above and dropped when
  covered, so a replay does not resend the whole log. Progress is held the same
  way. Past the journal (live), lines and progress are sent at once.
- checkpoints, progress and lines still held when the body ends are committed
  with the first compensation's result, or before the task result when nothing
  is compensated; only in that last case a crash between the two can repeat a
  checkpoint or a progress update (lines are still deduplicated).

Lines logged inside a step or compensation function go to ``step:<id>`` /
``compensation:<id>`` without an offset: they are emitted only when the
function really runs, never on replay, and a second run after a crash is a
second run whose lines should be kept. A resend of the same batch after a
reconnect is the worker's (``EventBatch.batch_no``). Command steps
(``ctx.run_command``, ``_command``) are the exception: a command run again after
a crash reprints the same output, so their stdout/stderr/lifecycle channels are
positional per attempt and the rerun's lines are dropped where stored.

Cancellation
------------
``task.cancel_requested`` or :meth:`WorkflowExecution.cancel`: the body gets a
:class:`CancelledSignal` at its next *live* ``ctx.step`` (or in a retry backoff).
Steps found in the journal still replay, so the compensation stack is rebuilt;
a step already running finishes and is recorded (then compensated), as in DBOS:
interrupting user code mid-call would leave the outside world unknown.

Compensation
------------
Completed steps registered with ``compensate=`` are compensated in reverse call
order (reverse ordinal: LIFO for a sequential body, and deterministic for
concurrent steps, whose completion order may differ between executions) on an
uncaught error, a cancellation or ``ctx.compensate()``. Each is journaled with
``compensation_started`` then ``compensation_completed``/``compensation_failed``;
one found in ``journal.compensations_run`` is not run again and keeps its
recorded status in the report; one that started but did not finish before a
crash runs again. A failing compensation does not stop the others. The outcome
follows the reference: cancelled; compensated / compensation_failed; failed
when the body raised and nothing was compensated.

When the body ends while steps it started are still running (a ``gather``
branch failed), the engine waits for them to finish and records them before it
compensates, and their branches get ``CancelledSignal`` instead of continuing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn

from google.protobuf import json_format

from ledgerflow.errors import (
    ChildRunFailedError,
    InvalidArgumentError,
    NonDeterminismError,
    StepFailedError,
    WaitTimeoutError,
    WorkflowUsageError,
)
from ledgerflow.ledger import (
    DeterministicRandom,
    apply_metadata_mutations,
    build_log_events,
    check_id,
)
from ledgerflow.ledger._logs import without_nul
from ledgerflow.ledger._time import set_duration_nanos, to_nanos
from ledgerflow.v1 import common_pb2, journal_pb2, run_service_pb2, workflow_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.workflow import _events
from ledgerflow.workflow._command import (
    COMMAND_STEP_KIND,
    CommandResult,
    CommandSpec,
    run_command,
)
from ledgerflow.workflow._context import MetadataTargetName, WorkflowContext, metadata_target
from ledgerflow.workflow._convert import decode, encode, return_hint, to_jsonable
from ledgerflow.workflow._definition import WorkflowDefinition
from ledgerflow.workflow._errorinfo import CANCELLED, error_info
from ledgerflow.workflow._retry import NO_RETRY, RetryPolicy
from ledgerflow.workflow._signals import (
    CancelledSignal,
    CompensateRequestedSignal,
    ControlFlowSignal,
    ExecutionAbortedSignal,
    WaitpointPendingSignal,
)
from ledgerflow.workflow._sink import BatchingSink, EventSink

START_REQUEST_ENCODING = "application/x-protobuf; messageType=ledgerflow.v1.StartRunRequest"
"""The encoding of a child start's registration payload: a serialized StartRunRequest."""

WORKFLOW_LOG_CHANNEL = "workflow"
"""The log channel of lines logged by the workflow body (positional)."""

_NANOS = 1_000_000_000
_STEP_TIMEOUT_CODE = "STEP_TIMEOUT"


@dataclass(frozen=True, slots=True)
class _Scope:
    """Marks code running inside a step or compensation function of one execution."""

    execution: WorkflowExecution
    kind: str  # "step" or "compensation": also the log channel's prefix.
    step_id: str
    attempt: int = 0


# Set around step and compensation functions; it follows them into tasks they
# start and into the thread of a sync function (asyncio.to_thread copies it).
_SCOPE: ContextVar[_Scope | None] = ContextVar("ledgerflow_workflow_scope", default=None)


@dataclass(slots=True)
class _Held:
    """Body-level emissions waiting for the next step start (see the module docstring)."""

    events: list[pb.LedgerEvent] = field(default_factory=list)
    mutations: list[pb.MetadataMutation] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.mutations)


@dataclass(slots=True)
class _Claim:
    step_id: str
    name: str
    ordinal: int
    result: journal_pb2.StepJournalEntry | None
    pending: journal_pb2.PendingStep | None
    prefix: _Held


@dataclass(slots=True)
class _Compensable:
    ordinal: int
    step_id: str
    output: Any
    fn: Callable[[Any], object]


@dataclass(slots=True)
class _BodyEnd:
    """How the body's coroutine ended: it returned ``output`` or raised ``exc``."""

    output: Any = None
    exc: BaseException | None = None


class WorkflowExecution:
    """One run of a workflow body for one workflow task.

    Create it, keep it to :meth:`cancel` it, and await :meth:`run` once.
    """

    def __init__(
        self,
        definition: WorkflowDefinition[Any, Any],
        task: workflow_pb2.WorkflowTask,
        sink: EventSink,
        *,
        worker_id: str = "",
        clock: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        linger: float = 0.0,
    ) -> None:
        """Prepare the execution; nothing runs before :meth:`run`.

        Args:
            definition: The workflow to run (from the worker's ``Registry``).
            task: The task: run id, input, journal, invocation, cancel flag. Not modified.
            sink: Where events go; must commit each call atomically and in order.
            worker_id: Recorded in ``step_started`` events.
            clock: Wall clock in epoch nanoseconds (event times, step finish times).
            sleep: Sleeps the given seconds (retry backoff); tests inject a fake.
            linger: How long events that nobody waits for (a step's start, log lines)
                may wait to share a batch with the next awaited one (see
                :class:`BatchingSink`); a worker trades that much snapshot latency for
                one round trip per quick step.
        """
        self._definition = definition
        self._task = task
        self._outbox = BatchingSink(sink, linger=linger)
        self._worker_id = worker_id
        self._clock = clock
        self._sleep = sleep
        self.run_id = task.run_id
        self.context = WorkflowContext(self)
        self._random = DeterministicRandom(task.run_id)
        start = to_nanos(task.run_start_time) if task.HasField("run_start_time") else 0
        self._now_ns = start if start > 0 else clock()

        journal = task.journal
        self._results = journal.step_results
        self._pendings = journal.pending_steps
        self._compensations_run = journal.compensations_run
        self._unclaimed: set[str] = set(self._results) | set(self._pendings)
        self._by_ordinal: dict[int, str] = {}
        for step_id, pending in self._pendings.items():
            if pending.ordinal:
                self._by_ordinal[pending.ordinal] = step_id
        for step_id, entry in self._results.items():
            if entry.ordinal:
                self._by_ordinal[entry.ordinal] = step_id

        self._ordinal = 0
        self._name_counts: dict[str, int] = {}
        self._last_step_id = ""
        self._held = _Held()
        self._body_lines = 0
        self._checkpoint_seqs: dict[str, int] = {}
        self._counter_lock = threading.Lock()
        # A proto map, as apply_metadata_mutations expects (indexing creates the entry).
        self._metadata_view = journal_pb2.JournalSlice().metadata_state
        self._compensables: list[_Compensable] = []
        # Waitpoints the body registered in this invocation (ctx.sleep, wait_for_signal),
        # and those the ledger resolved; ids come from a counter, as step ordinals do.
        self._waitpoints: list[workflow_pb2.WaitpointRegistration] = []
        self._resolved = journal.waitpoints_resolved
        self._wait_count = 0
        self._child_count = 0

        self._cancel_requested = task.cancel_requested
        self._cancel_reason = task.cancel_reason
        self._delivered: ControlFlowSignal | None = None
        self._abort_cause: BaseException | None = None
        self._closed = False
        self._started = False
        self._done = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    # -- the worker's side -----------------------------------------------------------------

    @property
    def task_id(self) -> str:
        """The task being executed."""
        return self._task.task_id

    def cancel(self, reason: str = "") -> None:
        """Request cancellation: the body gets ``CancelledSignal`` at its next live step.

        Safe to call from any thread; a second call does nothing.

        Args:
            reason: The cancellation's reason.
        """
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            with contextlib.suppress(RuntimeError):  # A closed loop: the task is over.
                loop.call_soon_threadsafe(self.cancel, reason)
            return
        if self._cancel_requested:
            return
        self._cancel_requested = True
        self._cancel_reason = reason or self._cancel_reason
        self._wake.set()

    async def run(self) -> workflow_pb2.WorkflowTaskResult:
        """Run the body from the top against the task's journal.

        Returns:
            The task's result, once every event the engine sent is committed.

        Raises:
            NonDeterminismError: The body and the ledger disagree; the task failed,
                the run did not. Nothing more was appended.
            Exception: Whatever the sink raised (e.g. a stale lease): the task must
                be abandoned; nothing more was appended.
            WorkflowUsageError: ``run`` was called twice.
        """
        if self._started:
            raise WorkflowUsageError("WorkflowExecution.run() may be called only once")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        try:
            ended = await self._run_body()
            self._closed = True
            self._wake.set()
            try:
                await self._drain()
                if self._abort_cause is None:
                    self._check_all_claimed()
                    return await self._finish(ended)
            except ExecutionAbortedSignal:
                pass
            assert self._abort_cause is not None
            raise self._abort_cause
        finally:
            # A sync step that outlived its timeout may still log from its thread:
            # nothing may reach the ledger after the task's result.
            self._done = True

    async def _run_body(self) -> _BodyEnd:
        definition = self._definition
        token = _SCOPE.set(None)
        try:
            if definition.takes_input:
                payload = self._task.input if self._task.HasField("input") else None
                body_input = decode(payload, definition.input_type)
                output = await definition.fn(self.context, body_input)
            else:
                output = await definition.fn(self.context)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # The worker cancelled the task itself: abandon it.
            return _BodyEnd(exc=exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            return _BodyEnd(exc=exc)
        finally:
            _SCOPE.reset(token)
        return _BodyEnd(output=output)

    async def _drain(self) -> None:
        # Steps still running in branches the body abandoned finish and are recorded.
        while self._inflight:
            await self._idle.wait()

    def _check_all_claimed(self) -> None:
        if not self._unclaimed:
            return
        missing = sorted(
            self._unclaimed,
            key=lambda s: (self._recorded_ordinal(s), s),
        )
        shown = ", ".join(f"{s!r} (ordinal {self._recorded_ordinal(s)})" for s in missing)
        err = NonDeterminismError(
            f"the ledger recorded step(s) the workflow body no longer calls: {shown}",
            ordinal=self._recorded_ordinal(missing[0]),
            recorded_step_id=missing[0],
        )
        self._abort_cause = err
        raise err

    def _recorded_ordinal(self, step_id: str) -> int:
        if step_id in self._results:
            return self._results[step_id].ordinal
        return self._pendings[step_id].ordinal

    async def _finish(self, ended: _BodyEnd) -> workflow_pb2.WorkflowTaskResult:
        exc = ended.exc
        signal = self._delivered
        if signal is not None and exc is not signal:
            # The body swallowed a signal (caught BaseException); it happened anyway.
            self._log(
                "warn",
                f"[ledgerflow] the workflow body swallowed {type(signal).__name__}; "
                "it is honoured anyway",
                body=True,
            )
            exc = signal
        output: common_pb2.Payload | None = None
        if exc is None:
            try:
                output = encode(ended.output)
            except (TypeError, ValueError) as err:
                exc = err

        result = workflow_pb2.WorkflowTaskResult(
            task_id=self._task.task_id,
            lease_epoch=self._task.lease_epoch,
            run_id=self.run_id,
        )
        # The reference executor's outcome table, row by row.
        waitpoints = self._waitpoints
        compensations: list[workflow_pb2.CompensationReport] = []
        if exc is None:
            result.outcome = (
                workflow_pb2.WORKFLOW_OUTCOME_WAITING
                if waitpoints
                else workflow_pb2.WORKFLOW_OUTCOME_COMPLETED
            )
            if output is not None and not waitpoints:
                result.output.CopyFrom(output)
        elif isinstance(exc, WaitpointPendingSignal) or (
            waitpoints and not isinstance(exc, CancelledSignal | CompensateRequestedSignal)
        ):
            result.outcome = workflow_pb2.WORKFLOW_OUTCOME_WAITING
        elif isinstance(exc, CancelledSignal):
            compensations = await self._compensate()
            result.outcome = workflow_pb2.WORKFLOW_OUTCOME_CANCELLED
            result.error.CopyFrom(
                common_pb2.ErrorInfo(
                    type=type(exc).__name__, message=str(exc), code=CANCELLED, category=CANCELLED
                )
            )
        elif isinstance(exc, CompensateRequestedSignal):
            compensations = await self._compensate()
            result.outcome = _compensation_outcome(compensations)
        else:
            compensations = await self._compensate()
            result.error.CopyFrom(error_info(exc))
            result.outcome = (
                _compensation_outcome(compensations)
                if compensations
                else workflow_pb2.WORKFLOW_OUTCOME_FAILED
            )
        if result.outcome == workflow_pb2.WORKFLOW_OUTCOME_WAITING:
            result.waitpoints.extend(waitpoints)
        result.compensations.extend(compensations)
        if self._held.events:
            await self._commit(self._held.events)
            self._held.events = []
        result.metadata_updates.extend(self._held.mutations)
        await self._outbox_flush()
        return result

    # -- steps -----------------------------------------------------------------------------

    def _step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: Sequence[Any],
        compensate: Callable[[Any], object] | None,
        retry: RetryPolicy | None,
        timeout: float | None,
        *,
        kind: str = _events.STEP_KIND,
        what: str = "ctx.step()",
    ) -> Coroutine[Any, Any, Any]:
        self._check_body_call(what)
        self._raise_if_stopped()
        claim = self._claim(name)
        return self._run_step(claim, fn, args, compensate, retry or NO_RETRY, timeout, kind)

    def _remote_step(
        self,
        name: str,
        step_input: Any,
        worker_kind: str,
        compensate: Callable[[Any], object] | None,
        timeout: float | None,
        hint: Any,
        schedule_to_start: float | None = None,
    ) -> Coroutine[Any, Any, Any]:
        self._check_body_call("ctx.step()")
        self._raise_if_stopped()
        check_id(worker_kind, "worker_kind")
        payload = encode(step_input)
        claim = self._claim(name)
        return self._run_remote(
            claim, payload, worker_kind, compensate, timeout, hint, schedule_to_start
        )

    async def _run_remote(
        self,
        claim: _Claim,
        payload: common_pb2.Payload,
        worker_kind: str,
        compensate: Callable[[Any], object] | None,
        seconds: float | None,
        hint: Any,
        schedule_to_start: float | None,
    ) -> Any:
        """A step on another worker: replay its result, or schedule it and wait (no slot)."""
        if claim.result is not None:
            self._raise_if_aborted()
            return self._replay(claim, claim.result, hint, compensate)
        self._raise_if_stopped()
        if self._cancel_requested:
            self._held.events[:0] = claim.prefix.events
            self._held.mutations[:0] = claim.prefix.mutations
            raise self._deliver(CancelledSignal(self._cancel_reason))
        if claim.pending is None:
            scheduled = _events.step_scheduled(
                self.run_id,
                self._clock(),
                step_id=claim.step_id,
                name=claim.name,
                ordinal=claim.ordinal,
                worker_kind=worker_kind,
                step_input=payload,
            )
            e = scheduled.step_scheduled
            if seconds is not None:
                set_duration_nanos(e.start_to_close_timeout, int(seconds * 1e9))
            if schedule_to_start is not None:
                set_duration_nanos(e.schedule_to_start_timeout, int(schedule_to_start * 1e9))
            prefix = claim.prefix
            self._outbox.post([*self._held_events(prefix), scheduled] if prefix else [scheduled])
        registration = workflow_pb2.WaitpointRegistration(
            waitpoint_id=f"step:{claim.step_id}",
            kind=pb.WAITPOINT_KIND_STEP,
            name=claim.step_id,
            payload=payload,
        )
        if seconds is not None:
            set_duration_nanos(registration.timeout, int(seconds * 1e9))
        self._waitpoints.append(registration)
        if schedule_to_start is not None and claim.pending is None:
            # Its own waitpoint: the coordinator fails the step if no worker starts it
            # by then (registered once; a replay finds it open or resolved).
            deadline = workflow_pb2.WaitpointRegistration(
                waitpoint_id=f"step-start:{claim.step_id}",
                kind=pb.WAITPOINT_KIND_STEP,
                name=claim.step_id,
            )
            set_duration_nanos(deadline.timeout, int(schedule_to_start * 1e9))
            self._waitpoints.append(deadline)
        raise self._deliver(WaitpointPendingSignal(registration.waitpoint_id))

    def _run_command(
        self,
        name: str,
        spec: CommandSpec,
        compensate: Callable[[Any], object] | None,
        retry: RetryPolicy | None,
        timeout: float | None,
    ) -> Coroutine[Any, Any, CommandResult]:
        # A command step is a step whose function ledgerflow ships: replay,
        # attempts, retries and timeouts are exactly those of ctx.step.
        return self._step(
            name,
            _command_step,
            (spec,),
            compensate,
            retry,
            timeout,
            kind=COMMAND_STEP_KIND,
            what="ctx.run_command()",
        )

    def _claim(self, name: str) -> _Claim:
        if not isinstance(name, str) or not name.strip() or "#" in name:
            raise InvalidArgumentError("name", f"{name!r} is not a step name (non-empty, no '#')")
        self._ordinal += 1
        ordinal = self._ordinal
        count = self._name_counts.get(name, 0) + 1
        self._name_counts[name] = count
        step_id = name if count == 1 else f"{name}#{count}"
        check_id(step_id, "step name")
        # .get on a proto map never inserts; indexing a missing key would.
        result = self._results.get(step_id)
        pending = self._pendings.get(step_id) if result is None else None
        recorded = self._by_ordinal.get(ordinal)
        if recorded is not None and recorded != step_id:
            raise self._nondeterministic(
                f"step call #{ordinal}: the ledger recorded step {recorded!r} here, "
                f"the workflow body now calls {step_id!r}",
                ordinal=ordinal,
                step_id=step_id,
                recorded_step_id=recorded,
            )
        entry = result or pending
        # A producer that sent no name leaves the step id as the recorded name.
        if entry is not None and (
            (entry.ordinal and entry.ordinal != ordinal) or (entry.name not in ("", name, step_id))
        ):
            raise self._nondeterministic(
                f"step {step_id!r} is step call #{ordinal} of the workflow body, but the "
                f"ledger recorded it as call #{entry.ordinal} named {entry.name!r}",
                ordinal=ordinal,
                step_id=step_id,
                recorded_step_id=step_id,
            )
        self._last_step_id = step_id
        if entry is not None:
            # The ledger has this step's start, so everything held before it was
            # committed with (or before) that start.
            self._unclaimed.discard(step_id)
            self._held = _Held()
            prefix = _Held()
        else:
            prefix, self._held = self._held, _Held()
        return _Claim(step_id, name, ordinal, result, pending, prefix)

    async def _run_step(
        self,
        claim: _Claim,
        fn: Callable[..., Any],
        args: Sequence[Any],
        compensate: Callable[[Any], object] | None,
        retry: RetryPolicy,
        attempt_timeout: float | None,
        kind: str,
    ) -> Any:
        hint = return_hint(fn)
        if claim.result is not None:
            # A journaled step replays even after a signal was delivered to another
            # branch: its compensation must be known.
            self._raise_if_aborted()
            return self._replay(claim, claim.result, hint, compensate)
        self._raise_if_stopped()
        if self._cancel_requested:
            # Not started: what was held for its start waits for the next one.
            self._held.events[:0] = claim.prefix.events
            self._held.mutations[:0] = claim.prefix.mutations
            raise self._deliver(CancelledSignal(self._cancel_reason))
        self._inflight += 1
        self._idle.clear()
        try:
            return await self._run_live(
                claim, fn, args, compensate, retry, attempt_timeout, hint, kind
            )
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _replay(
        self,
        claim: _Claim,
        entry: journal_pb2.StepJournalEntry,
        hint: Any,
        compensate: Callable[[Any], object] | None,
    ) -> Any:
        self._advance(to_nanos(entry.finish_time))
        if entry.status == journal_pb2.STEP_RESULT_STATUS_FAILED:
            error = common_pb2.ErrorInfo()
            error.CopyFrom(entry.error)
            raise StepFailedError(claim.step_id, error, attempt=entry.attempt)
        if entry.status != journal_pb2.STEP_RESULT_STATUS_COMPLETED:
            return None  # Skipped by another producer: there is no output.
        try:
            value = decode(entry.output if entry.HasField("output") else None, hint)
        except (TypeError, ValueError, KeyError) as err:
            raise self._nondeterministic(
                f"the recorded output of step {claim.step_id!r} no longer decodes as "
                f"{_type_name(hint)}: {err}",
                ordinal=claim.ordinal,
                step_id=claim.step_id,
                recorded_step_id=claim.step_id,
            ) from err
        if compensate is not None:
            self._compensables.append(_Compensable(claim.ordinal, claim.step_id, value, compensate))
        return value

    async def _run_live(
        self,
        claim: _Claim,
        fn: Callable[..., Any],
        args: Sequence[Any],
        compensate: Callable[[Any], object] | None,
        retry: RetryPolicy,
        attempt_timeout: float | None,
        hint: Any,
        kind: str,
    ) -> Any:
        step_id = claim.step_id
        attempt = 1
        pending = claim.pending
        if pending is not None:
            # Started before a crash and never finished: run that attempt again.
            attempt = max(1, pending.attempt)
            if pending.status == pb.STEP_STATUS_RETRYING:
                attempt += 1
                if pending.HasField("next_attempt_time"):
                    due = to_nanos(pending.next_attempt_time)
                    await self._backoff(max(0, due - self._clock()) / _NANOS)
        prefix: _Held | None = claim.prefix
        while True:
            self._raise_if_stopped()
            started = _events.step_started(
                self.run_id,
                self._clock(),
                step_id=step_id,
                name=claim.name,
                ordinal=claim.ordinal,
                attempt=attempt,
                worker_id=self._worker_id,
                kind=kind,
            )
            self._outbox.post([*self._held_events(prefix), started] if prefix else [started])
            prefix = None
            failure: BaseException | None = None
            info: common_pb2.ErrorInfo | None = None
            value: Any = None
            token = _SCOPE.set(_Scope(self, "step", step_id, attempt))
            try:
                value = await _invoke_with_timeout(fn, args, attempt_timeout)
            except TimeoutError as exc:
                failure = exc
                if attempt_timeout is not None and isinstance(exc, _StepTimeoutError):
                    info = error_info(
                        exc,
                        code=_STEP_TIMEOUT_CODE,
                        message=f"step {step_id!r} timed out after {attempt_timeout:g}s",
                    )
                    info.type = "TimeoutError"
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                failure = exc
            except (KeyboardInterrupt, SystemExit, ControlFlowSignal):
                raise
            except BaseException as exc:
                failure = exc
            finally:
                _SCOPE.reset(token)

            retryable = True
            output: Any = None
            payload: common_pb2.Payload | None = None
            if failure is None:
                try:
                    payload = encode(value)
                    output = decode(payload, hint)
                except (TypeError, ValueError, KeyError) as exc:
                    # Running the function again would not make its output encodable.
                    failure, retryable, payload = exc, False, None
                    info = error_info(exc, non_retryable=True)
            if payload is not None:
                finished = self._clock()
                await self._commit(
                    [
                        _events.step_completed(
                            self.run_id,
                            finished,
                            step_id=step_id,
                            attempt=attempt,
                            output=payload,
                            kind=kind,
                        )
                    ]
                )
                self._advance(finished)
                if compensate is not None:
                    self._compensables.append(
                        _Compensable(claim.ordinal, step_id, output, compensate)
                    )
                return output

            assert failure is not None
            if info is None:
                info = error_info(failure)
            retryable = retryable and not info.non_retryable and retry.is_retryable(failure)
            now = self._clock()
            if retryable and retry.allows_attempt(attempt + 1):
                delay = retry.backoff(attempt).total_seconds()
                await self._commit(
                    [
                        _events.step_failed(
                            self.run_id,
                            now,
                            step_id=step_id,
                            attempt=attempt,
                            error=info,
                            next_attempt_ns=now + round(delay * _NANOS),
                            kind=kind,
                        )
                    ]
                )
                await self._backoff(delay)
                attempt += 1
                continue
            await self._commit(
                [
                    _events.step_failed(
                        self.run_id,
                        now,
                        step_id=step_id,
                        attempt=attempt,
                        error=info,
                        next_attempt_ns=None,
                        kind=kind,
                    )
                ]
            )
            self._advance(now)
            raise StepFailedError(step_id, info, attempt=attempt) from failure

    async def _backoff(self, seconds: float) -> None:
        self._raise_if_cancelled()
        if seconds > 0:
            sleeper = asyncio.ensure_future(self._sleep(seconds))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
        self._raise_if_cancelled()

    def _raise_if_cancelled(self) -> None:
        if self._cancel_requested:
            raise self._deliver(CancelledSignal(self._cancel_reason))
        if self._closed:
            raise CancelledSignal("the workflow body has already finished")

    # -- waitpoints ------------------------------------------------------------------------

    def _wait(
        self,
        kind: pb.WaitpointKind.ValueType,
        label: str,
        name: str,
        deadline_ns: int | None,
        what: str,
    ) -> tuple[str, journal_pb2.WaitpointResolution]:
        """Return the waitpoint's id and recorded resolution, or register it and unwind.

        The id is ``label#n`` for the body's n-th wait, so a replay finds the same
        waitpoint at the same point. An unresolved wait is registered (its remaining
        time measured on the wall clock, which the coordinator turns into its own
        deadline) and ``WaitpointPendingSignal`` unwinds the body: the run waits
        without holding the worker, and is dispatched again once it is resolved.
        """
        self._check_body_call(what)
        self._raise_if_stopped()
        self._wait_count += 1
        return self._wait_on(f"{label}#{self._wait_count}", kind, name, deadline_ns)

    def _wait_on(
        self,
        waitpoint_id: str,
        kind: pb.WaitpointKind.ValueType,
        name: str,
        deadline_ns: int | None,
        payload: common_pb2.Payload | None = None,
    ) -> tuple[str, journal_pb2.WaitpointResolution]:
        resolution = self._resolved.get(waitpoint_id)
        if resolution is not None:
            if resolution.kind != kind:
                raise self._nondeterministic(
                    f"the workflow body waits on {waitpoint_id!r} as a "
                    f"{pb.WaitpointKind.Name(kind)} but the ledger resolved it as a "
                    f"{pb.WaitpointKind.Name(resolution.kind)}",
                    ordinal=self._wait_count,
                    step_id=waitpoint_id,
                    recorded_step_id=waitpoint_id,
                )
            self._advance(to_nanos(resolution.resolve_time))
            return waitpoint_id, resolution
        self._raise_if_cancelled()
        registration = workflow_pb2.WaitpointRegistration(
            waitpoint_id=waitpoint_id, kind=kind, name=name, payload=payload
        )
        if deadline_ns is not None:
            set_duration_nanos(registration.timeout, max(0, deadline_ns - self._clock()))
        self._waitpoints.append(registration)
        raise self._deliver(WaitpointPendingSignal(waitpoint_id))

    def _child_run_id(self, run_id: str | None) -> str:
        self._check_body_call("ctx.start_child()")
        self._raise_if_stopped()
        self._child_count += 1
        child = run_id or f"{self.run_id}.child-{self._child_count}"
        check_id(child, "run_id")
        return child

    async def _start_child(
        self, child_run_id: str, request: run_service_pb2.StartRunRequest
    ) -> None:
        """Start the child durably: the coordinator creates it, the body goes on after."""
        payload = common_pb2.Payload(
            data=request.SerializeToString(), encoding=START_REQUEST_ENCODING
        )
        self._wait_on(
            f"child-start:{child_run_id}", pb.WAITPOINT_KIND_CHILD_RUN, child_run_id, None, payload
        )

    async def _child_result(self, child_run_id: str, hint: Any) -> Any:
        self._check_body_call("ChildHandle.result()")
        self._raise_if_stopped()
        _, resolution = self._wait_on(
            f"child:{child_run_id}", pb.WAITPOINT_KIND_CHILD_RUN, child_run_id, None
        )
        if resolution.HasField("error"):
            error = common_pb2.ErrorInfo()
            error.CopyFrom(resolution.error)
            raise ChildRunFailedError(child_run_id, error)
        return decode(resolution.payload if resolution.HasField("payload") else None, hint)

    async def _sleep_until(self, deadline_ns: int) -> None:
        self._wait(pb.WAITPOINT_KIND_TIMER, "sleep", "", deadline_ns, "ctx.sleep()")

    async def _wait_for_signal(self, name: str, seconds: float | None, hint: Any) -> Any:
        deadline = None if seconds is None else self._now_ns + int(seconds * 1e9)
        waitpoint_id, resolution = self._wait(
            pb.WAITPOINT_KIND_SIGNAL, f"signal:{name}", name, deadline, "ctx.wait_for_signal()"
        )
        if resolution.timed_out:
            raise WaitTimeoutError(waitpoint_id, name)
        payload = resolution.payload if resolution.HasField("payload") else None
        return decode(payload, hint)

    # -- compensation ----------------------------------------------------------------------

    async def _compensate(self) -> list[workflow_pb2.CompensationReport]:
        stack = sorted(self._compensables, key=lambda c: c.ordinal, reverse=True)
        reports: list[workflow_pb2.CompensationReport] = []
        # What the body still held travels with the first compensation's result;
        # if that one is journaled, it was committed then.
        held = self._held.events
        self._held.events = []
        if stack and stack[0].step_id in self._compensations_run:
            held = []
        for item in stack:
            recorded = self._compensations_run.get(item.step_id)
            if recorded is not None:
                report = workflow_pb2.CompensationReport(
                    step_id=item.step_id, status=recorded.status
                )
                if recorded.HasField("error"):
                    report.error.CopyFrom(recorded.error)
                reports.append(report)
                continue
            self._outbox.post(
                [_events.compensation_started(self.run_id, self._clock(), item.step_id)]
            )
            began = self._clock()
            error: common_pb2.ErrorInfo | None = None
            token = _SCOPE.set(_Scope(self, "compensation", item.step_id))
            try:
                await _invoke(item.fn, (item.output,))
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                error = error_info(exc)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                # One failing compensation does not stop the others.
                error = error_info(exc)
            finally:
                _SCOPE.reset(token)
            ended = self._clock()
            finished = _events.compensation_finished(self.run_id, ended, item.step_id, error)
            await self._commit([*held, finished])
            held = []
            report = workflow_pb2.CompensationReport(
                step_id=item.step_id,
                status=(
                    pb.COMPENSATION_STATUS_COMPLETED
                    if error is None
                    else pb.COMPENSATION_STATUS_FAILED
                ),
            )
            if error is not None:
                report.error.CopyFrom(error)
            set_duration_nanos(report.duration, max(0, ended - began))
            reports.append(report)
        self._held.events[:0] = held
        return reports

    # -- what the body emits ---------------------------------------------------------------

    def _log(self, level: str, message: str, *, body: bool = False) -> None:
        lines = without_nul([f"[{level}] {line}" for line in (message.splitlines() or [""])])
        scope = None if body else self._scope()
        if scope is not None:
            channel = f"{scope.kind}:{scope.step_id}"
            self._post_from_scope(
                build_log_events(
                    self.run_id, lines, event_time_nanos=self._clock(), channel=channel
                )
            )
            return
        self._check_loop_thread("ctx.log")
        offset = self._body_lines
        self._body_lines += len(lines)
        events = build_log_events(
            self.run_id,
            lines,
            event_time_nanos=self._clock(),
            channel=WORKFLOW_LOG_CHANNEL,
            channel_offset=offset,
        )
        self._emit_body(events, eager=True)

    def _progress(
        self,
        step: str | None,
        completed: int | None,
        total: int | None,
        failed: int | None,
        message: str | None,
    ) -> None:
        scope = self._scope()
        step_id = step or (scope.step_id if scope is not None else "")
        if not step_id:
            raise InvalidArgumentError("step", "is required outside a step function")
        check_id(step_id, "step")
        event = _events.step_progress(
            self.run_id,
            self._clock(),
            step_id=step_id,
            completed=completed,
            total=total,
            failed=failed,
            message=message,
        )
        if scope is not None:
            self._post_from_scope([event])
        else:
            self._check_loop_thread("ctx.progress")
            self._emit_body([event], eager=True)

    def _checkpoint(
        self,
        summary: str,
        step: str | None,
        kind: pb.CheckpointType.ValueType,
        lines: list[str],
        truncated: bool,
        payload: object,
    ) -> None:
        scope = self._scope()
        if scope is None:
            self._check_loop_thread("ctx.checkpoint")
        step_id = step or (scope.step_id if scope is not None else self._last_step_id)
        if not step_id:
            raise InvalidArgumentError("step", "is required before the body's first step")
        check_id(step_id, "step")
        encoded = encode(payload) if payload is not None else None
        with self._counter_lock:
            seq = self._checkpoint_seqs.get(step_id, 0) + 1
            self._checkpoint_seqs[step_id] = seq
        event = _events.checkpoint(
            self.run_id,
            self._clock(),
            step_id=step_id,
            checkpoint_seq=seq,
            kind=kind,
            summary=summary,
            lines=lines,
            truncated=truncated,
            payload=encoded,
        )
        if scope is not None:
            self._post_from_scope([event])
        else:
            self._emit_body([event], eager=False)

    def _mutate(
        self,
        op: pb.MetadataOp.ValueType,
        key: str,
        value: object,
        target: MetadataTargetName,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError("key", "must be a non-empty string")
        mutation = pb.MetadataMutation(op=op, key=key, target=metadata_target(target))
        if op != pb.METADATA_OP_REMOVE:
            json_format.ParseDict(to_jsonable(value), mutation.value)
        scope = self._scope()
        if scope is not None:
            self._post_from_scope(
                [_events.metadata_updated(self.run_id, self._clock(), [mutation])]
            )
            return
        self._check_loop_thread("ctx.metadata")
        apply_metadata_mutations(self._metadata_view, [mutation])
        self._held.mutations.append(mutation)

    def _request_compensation(self) -> NoReturn:
        self._check_body_call("ctx.compensate()")
        self._raise_if_stopped()
        raise self._deliver(CompensateRequestedSignal())

    def _emit_body(self, events: list[pb.LedgerEvent], *, eager: bool) -> None:
        if self._done:
            return
        # Eager kinds leave at once past the journal; while replaying they wait to
        # learn whether the next step proves them committed.
        if eager and not self._unclaimed and not self._closed:
            self._outbox.post(events)
        else:
            self._held.events.extend(events)

    def _held_events(self, held: _Held) -> list[pb.LedgerEvent]:
        events = list(held.events)
        if held.mutations:
            events.append(_events.metadata_updated(self.run_id, self._clock(), held.mutations))
        return events

    def _post_from_scope(self, events: list[pb.LedgerEvent]) -> None:
        if not events or self._done:
            return
        if threading.get_ident() == self._thread or self._loop is None:
            self._outbox.post(events)
            return
        # A closed loop means the task is over and the events have nowhere to go.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._post_if_running, events)

    def _post_if_running(self, events: list[pb.LedgerEvent]) -> None:
        if not self._done:
            self._outbox.post(events)

    # -- state helpers ---------------------------------------------------------------------

    def _scope(self) -> _Scope | None:
        scope = _SCOPE.get()
        return scope if scope is not None and scope.execution is self else None

    def _check_body_call(self, what: str) -> None:
        if self._scope() is not None:
            raise WorkflowUsageError(
                f"{what} belongs to the workflow body; it cannot be called inside a step "
                "or compensation function"
            )
        self._check_loop_thread(what)

    def _check_loop_thread(self, what: str) -> None:
        if self._started and threading.get_ident() != self._thread:
            raise WorkflowUsageError(f"{what} must be called on the workflow's event loop")

    def _raise_if_aborted(self) -> None:
        cause = self._abort_cause
        if cause is not None:
            if isinstance(cause, NonDeterminismError):
                raise cause
            raise ExecutionAbortedSignal(str(cause))

    def _raise_if_stopped(self) -> None:
        self._raise_if_aborted()
        if self._delivered is not None:
            raise self._delivered
        if self._closed:
            raise CancelledSignal("the workflow body has already finished")

    def _deliver(self, signal: ControlFlowSignal) -> ControlFlowSignal:
        if self._delivered is None:
            self._delivered = signal
        return self._delivered

    def _nondeterministic(
        self, message: str, *, ordinal: int, step_id: str, recorded_step_id: str
    ) -> NonDeterminismError:
        err = NonDeterminismError(
            message, ordinal=ordinal, step_id=step_id, recorded_step_id=recorded_step_id
        )
        if self._abort_cause is None:
            self._abort_cause = err
        return err

    def _advance(self, time_ns: int) -> None:
        if time_ns > self._now_ns:
            self._now_ns = time_ns

    async def _commit(self, events: Sequence[pb.LedgerEvent]) -> None:
        if self._abort_cause is not None:
            raise ExecutionAbortedSignal(str(self._abort_cause))
        try:
            await self._outbox.append(events)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise self._aborted(self._outbox.failure or asyncio.CancelledError()) from None
        except BaseException as exc:
            raise self._aborted(exc) from None

    async def _outbox_flush(self) -> None:
        try:
            await self._outbox.flush()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise self._aborted(self._outbox.failure or asyncio.CancelledError()) from None
        except BaseException as exc:
            raise self._aborted(exc) from None

    def _aborted(self, cause: BaseException) -> ExecutionAbortedSignal:
        if self._abort_cause is None:
            self._abort_cause = cause
        return ExecutionAbortedSignal(str(cause))


async def execute(
    definition: WorkflowDefinition[Any, Any],
    task: workflow_pb2.WorkflowTask,
    sink: EventSink,
    *,
    worker_id: str = "",
    clock: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> workflow_pb2.WorkflowTaskResult:
    """Run one workflow task: ``WorkflowExecution(...).run()`` when no ``cancel()`` is needed.

    Args:
        definition: The workflow to run.
        task: The workflow task.
        sink: Where events go.
        worker_id: Recorded in ``step_started`` events.
        clock: Wall clock in epoch nanoseconds.
        sleep: Sleeps the given seconds (retry backoff).

    Returns:
        The task's result.

    Raises:
        NonDeterminismError: The body and the ledger disagree; the task failed.
        Exception: Whatever the sink raised.
    """
    execution = WorkflowExecution(
        definition, task, sink, worker_id=worker_id, clock=clock, sleep=sleep
    )
    return await execution.run()


async def _command_step(spec: CommandSpec) -> CommandResult:
    # Its return annotation is what replay decodes the journaled output into.
    scope = _SCOPE.get()
    assert scope is not None, "a command step runs inside its step's scope"
    return await run_command(spec, _CommandHost(scope))


class _CommandHost:
    """What a command step reaches of the execution running it (``CommandHost``)."""

    __slots__ = ("_ex", "attempt", "run_id", "step_id")

    def __init__(self, scope: _Scope) -> None:
        self._ex = scope.execution
        self.run_id = scope.execution.run_id
        self.step_id = scope.step_id
        self.attempt = max(1, scope.attempt)

    def now_ns(self) -> int:
        return self._ex._clock()

    def post(self, events: Sequence[pb.LedgerEvent]) -> None:
        self._ex._post_from_scope(list(events))

    async def commit(self, events: Sequence[pb.LedgerEvent]) -> None:
        await self._ex._commit(events)

    def checkpoint(
        self, summary: str, kind: pb.CheckpointType.ValueType, lines: list[str], truncated: bool
    ) -> None:
        self._ex._checkpoint(summary, None, kind, lines, truncated, None)


def _compensation_outcome(
    reports: Sequence[workflow_pb2.CompensationReport],
) -> workflow_pb2.WorkflowOutcome.ValueType:
    if any(r.status == pb.COMPENSATION_STATUS_FAILED for r in reports):
        return workflow_pb2.WORKFLOW_OUTCOME_COMPENSATION_FAILED
    return workflow_pb2.WORKFLOW_OUTCOME_COMPENSATED


class _StepTimeoutError(TimeoutError):
    """The step's own timeout fired (not a TimeoutError raised by the step function)."""


async def _invoke_with_timeout(
    fn: Callable[..., Any], args: Sequence[Any], limit: float | None
) -> Any:
    if limit is None:
        return await _invoke(fn, args)
    cm = asyncio.timeout(limit)
    try:
        async with cm:
            return await _invoke(fn, args)
    except TimeoutError as exc:
        if cm.expired():
            raise _StepTimeoutError() from exc
        raise


async def _invoke(fn: Callable[..., Any], args: Sequence[Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    # A sync function runs in a thread so it cannot stall the event loop (and the
    # lease heartbeats on it); the scope context variable goes with it.
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)

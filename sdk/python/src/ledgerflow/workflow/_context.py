"""``ctx``: everything a workflow body may touch, deterministic on replay.

A thin facade over the running :class:`~ledgerflow.workflow.WorkflowExecution`:
the body reaches time, randomness, ids, steps, logs, progress, checkpoints and
metadata only through it (STYLE §2).

Inside a step or compensation function, ``ctx.log``, ``ctx.progress``,
``ctx.checkpoint`` and ``ctx.metadata`` writes are allowed (also from the thread
a sync step runs in); they are sent at once, on the step's own log channel, and
happen again if the step runs again. ``ctx.step``, ``ctx.random``,
``ctx.uuid4`` and ``ctx.compensate`` belong to the body only: a step function
does not run on replay, so drawing from the run's random stream there would
shift every later draw of the body.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, TypeVarTuple, overload

from google.protobuf import json_format

from ledgerflow.errors import InvalidArgumentError
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2
from ledgerflow.workflow._command import (
    DEFAULT_LOG_TAIL_LINES,
    CommandResult,
    StrPath,
    command_spec,
    default_step_name,
)
from ledgerflow.workflow._convert import encode
from ledgerflow.workflow._definition import WorkflowDefinition
from ledgerflow.workflow._retry import RetryPolicy

if TYPE_CHECKING:
    from ledgerflow.workflow._execution import WorkflowExecution

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

MetadataTargetName = Literal["self", "parent", "root"]
"""Whose metadata a mutation changes: the run itself, its parent run, or its root run."""
CheckpointKind = Literal["summary", "log_tail", "git_diff", "custom"]
"""The kind of a checkpoint (``CheckpointType`` in the protos)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TARGETS: dict[str, pb.MetadataTarget.ValueType] = {
    "self": pb.METADATA_TARGET_SELF,
    "parent": pb.METADATA_TARGET_PARENT,
    "root": pb.METADATA_TARGET_ROOT,
}
_CHECKPOINT_KINDS: dict[str, pb.CheckpointType.ValueType] = {
    "summary": pb.CHECKPOINT_TYPE_SUMMARY,
    "log_tail": pb.CHECKPOINT_TYPE_LOG_TAIL,
    "git_diff": pb.CHECKPOINT_TYPE_GIT_DIFF,
    "custom": pb.CHECKPOINT_TYPE_CUSTOM,
}


class WorkflowLog:
    """``ctx.log``: lines for the run's log, formatted ``[level] message``.

    In the body, lines go to the ``workflow`` channel with positional offsets, so
    the lines a replay emits again are dropped by ingestion and every line is
    stored exactly once. In a step function they go to ``step:<step id>``.
    A multi-line message becomes one line per line. ``%``-style ``args`` are
    applied as by :mod:`logging`.
    """

    __slots__ = ("_ex",)

    def __init__(self, execution: WorkflowExecution) -> None:
        self._ex = execution

    def info(self, message: str, *args: object) -> None:
        """Log at level info.

        Args:
            message: The message, ``%``-formatted with ``args`` when given.
            *args: Formatting arguments.
        """
        self._ex._log("info", message % args if args else message)

    def warn(self, message: str, *args: object) -> None:
        """Log at level warn.

        Args:
            message: The message, ``%``-formatted with ``args`` when given.
            *args: Formatting arguments.
        """
        self._ex._log("warn", message % args if args else message)

    warning = warn

    def error(self, message: str, *args: object) -> None:
        """Log at level error.

        Args:
            message: The message, ``%``-formatted with ``args`` when given.
            *args: Formatting arguments.
        """
        self._ex._log("error", message % args if args else message)


class WorkflowMetadata:
    """``ctx.metadata``: mutations of the run's metadata (``metadata_updated`` events).

    Writes from the body are exactly once: they travel with the next step's
    ``step_started`` (or in the task result after the last step), and a replay
    does not send them again. Reads (``get``, ``[key]``, ``in``, ``to_dict``) see
    the mutations *the body* made so far in this execution, targeting the run
    itself, replayed deterministically; mutations made inside step functions are
    recorded but not visible to reads, because they are not replayed. Numbers read
    back as ``float`` (metadata values are ``google.protobuf.Value``).
    """

    __slots__ = ("_ex",)

    def __init__(self, execution: WorkflowExecution) -> None:
        self._ex = execution

    def set(self, key: str, value: object, *, target: MetadataTargetName = "self") -> None:
        """Set ``key`` to a JSON-compatible ``value``.

        Args:
            key: The key.
            value: The value (JSON values, dataclasses and pydantic models convert).
            target: Whose metadata changes.
        """
        self._ex._mutate(pb.METADATA_OP_SET, key, value, target)

    def delete(self, key: str, *, target: MetadataTargetName = "self") -> None:
        """Remove ``key`` (no-op when absent).

        Args:
            key: The key.
            target: Whose metadata changes.
        """
        self._ex._mutate(pb.METADATA_OP_REMOVE, key, None, target)

    def increment(self, key: str, by: float = 1, *, target: MetadataTargetName = "self") -> None:
        """Add ``by`` to the number at ``key`` (a missing or non-numeric value counts as 0).

        Args:
            key: The key.
            by: The amount.
            target: Whose metadata changes.
        """
        self._ex._mutate(pb.METADATA_OP_INCREMENT, key, by, target)

    def append(self, key: str, value: object, *, target: MetadataTargetName = "self") -> None:
        """Append ``value`` to the list at ``key`` (missing starts a list, a scalar is wrapped).

        Args:
            key: The key.
            value: The value.
            target: Whose metadata changes.
        """
        self._ex._mutate(pb.METADATA_OP_APPEND, key, value, target)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value at ``key`` as the body's own mutations left it, else ``default``."""
        value = self._ex._metadata_view.get(key)
        return default if value is None else json_format.MessageToDict(value)

    def __getitem__(self, key: str) -> Any:
        """Return the value at ``key``; raise KeyError when absent."""
        value = self._ex._metadata_view.get(key)
        if value is None:
            raise KeyError(key)
        return json_format.MessageToDict(value)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is set."""
        return key in self._ex._metadata_view

    def to_dict(self) -> dict[str, Any]:
        """Return every key and value, as the body's own mutations left them."""
        return {k: json_format.MessageToDict(v) for k, v in self._ex._metadata_view.items()}


class WorkflowContext:
    """``ctx``: the deterministic API of a workflow body.

    Attributes:
        log: Lines for the run's log (:class:`WorkflowLog`).
        metadata: Mutations of the run's metadata (:class:`WorkflowMetadata`).
    """

    __slots__ = ("_ex", "log", "metadata")

    def __init__(self, execution: WorkflowExecution) -> None:
        self._ex = execution
        self.log = WorkflowLog(execution)
        self.metadata = WorkflowMetadata(execution)

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._ex.run_id

    @property
    def workflow_name(self) -> str:
        """The workflow's registered name."""
        return self._ex._definition.name

    @property
    def attempt(self) -> int:
        """How many workflow tasks were dispatched for this run, this one included (from 1)."""
        return max(1, self._ex._task.invocation)

    @property
    def cancelled(self) -> bool:
        """Whether cancellation was requested (``CancelledSignal`` comes at the next live step)."""
        return self._ex._cancel_requested

    @property
    def is_replaying(self) -> bool:
        """Whether the journal still holds steps the body has not reached again."""
        return bool(self._ex._unclaimed)

    def now(self) -> datetime:
        """Return the workflow's current time, identical on every replay.

        It is the run's start time until the first step finishes, then the finish
        time (as journaled) of the latest step the body has seen finish: the wall
        clock when that step finished, recorded in its ``step_completed`` /
        ``step_failed`` event.

        Returns:
            A timezone-aware UTC datetime (microsecond precision).
        """
        return _EPOCH + timedelta(microseconds=self._ex._now_ns // 1000)

    def random(self) -> float:
        """Return the next float in [0, 1) of the run's deterministic stream.

        Mulberry32 seeded by FNV-1a-32 of the run id, shared with :meth:`uuid4`,
        bit-exact with every ledgerflow SDK (``tests/vectors/determinism.json``).

        Raises:
            WorkflowUsageError: If called inside a step or compensation function.
        """
        self._ex._check_body_call("ctx.random()")
        return self._ex._random.random()

    def uuid4(self) -> uuid.UUID:
        """Return the next deterministic version-4-shaped UUID (16 draws of the stream).

        Raises:
            WorkflowUsageError: If called inside a step or compensation function.
        """
        self._ex._check_body_call("ctx.uuid4()")
        return uuid.UUID(self._ex._random.uuid4())

    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], Awaitable[T]],
        /,
        *args: *Ts,
        compensate: Callable[[T], object] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
    ) -> Awaitable[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], T],
        /,
        *args: *Ts,
        compensate: Callable[[T], object] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
    ) -> Awaitable[T]: ...
    @overload
    def step(
        self,
        name: str,
        step_input: Any = None,
        /,
        *,
        worker_kind: str,
        compensate: Callable[[Any], object] | None = None,
        timeout: float | timedelta | None = None,
        result_type: Any = None,
        schedule_to_start_timeout: float | timedelta | None = None,
    ) -> Awaitable[Any]: ...
    # mypy cannot match a TypeVarTuple ``*args`` of the overloads against ``*args: Any``.
    def step(  # type: ignore[misc]
        self,
        name: str,
        fn: Any = None,
        /,
        *args: Any,
        compensate: Callable[[Any], object] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        worker_kind: str | None = None,
        result_type: Any = None,
        schedule_to_start_timeout: float | timedelta | None = None,
    ) -> Awaitable[Any]:
        """Run ``fn(*args)`` as a durable step, or return its journaled result on replay.

        With ``worker_kind``, the step runs on a worker that registered that kind
        (any language; ``docs/worker-protocol.md``, Step tasks): the second argument
        is the step's input (JSON by default), the run waits without holding this
        worker, and the step's logs, progress and checkpoints land in the run. Its
        output (typed by ``result_type``) or error resumes the body; a worker that
        dies mid-step has the step dispatched again once its lease expires.

        The step's position is claimed when ``ctx.step`` is *called* (not when it
        is awaited), so ``asyncio.gather(ctx.step(...), ctx.step(...))`` numbers
        its steps in argument order on every execution. The step id is ``name``,
        with ``#2``, ``#3``, ... for later calls with the same name.

        A live step sends ``step_started``, runs ``fn`` (a sync function in a
        thread), then sends ``step_completed`` or ``step_failed``; the await returns
        only once that result is committed. The output makes a JSON round trip typed
        by ``fn``'s return annotation, live as on replay.

        Args:
            name: The step's name; must not contain ``#``.
            fn: A sync or async function.
            *args: Its positional arguments (they are not recorded).
            compensate: Called with the step's output, LIFO, if the run later fails,
                is cancelled or calls ``ctx.compensate()``; sync or async.
            retry: The retry policy; one attempt when None.
            timeout: Limit of one attempt, in seconds; a timeout is a failure of
                type ``TimeoutError`` (code ``STEP_TIMEOUT``), retried per policy.
            worker_kind: Run the step on a worker of this kind instead (``fn`` is then
                the step's input).
            result_type: With ``worker_kind``: decode the output as this type (None
                returns the JSON value).
            schedule_to_start_timeout: With ``worker_kind``: fail the step (a
                ``TimeoutError``, code ``SCHEDULE_TO_START_TIMEOUT``) if no worker of
                that kind starts it within this long.

        Returns:
            An awaitable of the step's output.

        Raises:
            StepFailedError: (when awaited) The step failed for good.
            NonDeterminismError: The ledger recorded a different step at this position.
            CancelledSignal: (when awaited) The run is being cancelled.
            WorkflowUsageError: Called inside a step function or off the event loop.
            InvalidArgumentError: The name is empty, contains ``#`` or is too long;
                or, with ``worker_kind``, extra arguments or a retry policy were given.
        """
        seconds = _seconds(timeout) if timeout is not None else None
        if worker_kind is not None:
            if args:
                raise InvalidArgumentError(
                    "args", "a step on another worker takes one input value, not arguments"
                )
            if retry is not None:
                raise InvalidArgumentError(
                    "retry", "not supported yet for a step on another worker"
                )
            to_start = (
                _seconds(schedule_to_start_timeout)
                if schedule_to_start_timeout is not None
                else None
            )
            return self._ex._remote_step(
                name, fn, worker_kind, compensate, seconds, result_type, to_start
            )
        return self._ex._step(name, fn, args, compensate, retry, seconds)

    def run_command(
        self,
        argv: Sequence[StrPath],
        *,
        name: str | None = None,
        cwd: StrPath | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | timedelta | None = None,
        retry: RetryPolicy | None = None,
        check: bool = True,
        blocked_exit_codes: Collection[int] = (),
        artifacts: Sequence[StrPath] = (),
        log_tail_lines: int = DEFAULT_LOG_TAIL_LINES,
        checkpoints: bool = True,
        summary: str | None = None,
        compensate: Callable[[CommandResult], object] | None = None,
    ) -> Awaitable[CommandResult]:
        """Run a subprocess as a durable step (kind ``command``), or return its journaled result.

        A step like :meth:`step`: its position is claimed when called, a finished
        command step returns its recorded result on replay without running, one
        that was running when its worker died runs again under the same attempt,
        ``retry`` and ``timeout`` apply per attempt. The command's stdout and
        stderr stream to the positional channels ``step:<id>:stdout`` and
        ``step:<id>:stderr`` while it runs (``@<attempt>`` appended after the
        first attempt), lifecycle lines to ``step:<id>:lifecycle``; a summary
        checkpoint is recorded at the start and a log-tail checkpoint at the end.

        The command is blocked when its exit code is in ``blocked_exit_codes`` or
        when it writes ``{"outcome": "blocked"}`` (or ``"blocked": true``) to the
        JSON file named by ``$LEDGERFLOW_RESULT_FILE``; that file may also give
        ``summary``, ``needs_human``, ``artifacts`` and ``suggested_followups``.

        Args:
            argv: The program and its arguments; no shell is involved.
            name: The step's name; defaults to the program's file name.
            cwd: The working directory; the worker's when None.
            env: Variables added to (or replacing ones of) the worker's environment.
            timeout: Limit of one attempt, in seconds; on expiry the command's
                process group gets SIGTERM, then SIGKILL, and the attempt fails with
                ``TimeoutError`` (code ``STEP_TIMEOUT``).
            retry: The retry policy; one attempt when None.
            check: When true, a failed command fails the step
                (``CommandFailedError``); when false it returns a result with
                outcome ``failed``.
            blocked_exit_codes: Exit codes meaning "blocked, needs a person".
            artifacts: Paths (relative to ``cwd``) reported as artifacts when they exist.
            log_tail_lines: Combined lines kept by the final log-tail checkpoint.
            checkpoints: Whether to record the two checkpoints.
            summary: The summary of the starting checkpoint.
            compensate: Called with the result, LIFO, like :meth:`step`'s.

        Returns:
            An awaitable of the :class:`CommandResult`.

        Raises:
            StepFailedError: (when awaited) The command failed (``error_type``
                ``CommandFailedError``), timed out, or could not be started, for good.
            NonDeterminismError: The ledger recorded a different step at this position.
            CancelledSignal: (when awaited) The run is being cancelled.
            WorkflowUsageError: Called inside a step function or off the event loop.
            TypeError: ``argv`` is a string or empty.
        """
        spec = command_spec(
            argv,
            cwd=cwd,
            env=env,
            timeout=_seconds(timeout) if timeout is not None else None,
            check=check,
            blocked_exit_codes=frozenset(blocked_exit_codes),
            artifacts=artifacts,
            log_tail_lines=log_tail_lines,
            checkpoints=checkpoints,
            summary=summary,
        )
        return self._ex._run_command(
            name if name is not None else default_step_name(argv),
            spec,
            compensate,
            retry,
            spec.timeout,
        )

    def progress(
        self,
        step: str | None = None,
        *,
        completed: int | None = None,
        total: int | None = None,
        failed: int | None = None,
        message: str | None = None,
    ) -> None:
        """Record progress counters of ``step`` (a ``step_progress`` event; fields merge).

        ``step`` may name any unit of work, not only a ``ctx.step``; the snapshot
        infers completion once ``completed >= total > 0``.

        Args:
            step: The step id; defaults to the running step inside a step function.
            completed: Units done.
            total: Units expected.
            failed: Units that failed.
            message: A short status text.

        Raises:
            InvalidArgumentError: If no step is given outside a step function.
        """
        self._ex._progress(step, completed, total, failed, message)

    def checkpoint(
        self,
        summary: str = "",
        *,
        step: str | None = None,
        kind: CheckpointKind = "summary",
        lines: Sequence[str] = (),
        truncated: bool = False,
        payload: object = None,
    ) -> None:
        """Record a checkpoint of a step (a ``checkpoint_recorded`` event).

        Args:
            summary: A one-line description.
            step: The step id; defaults to the running step inside a step function,
                else to the step the body called last.
            kind: ``summary``, ``log_tail``, ``git_diff`` or ``custom``.
            lines: Log lines of a ``log_tail`` checkpoint, oldest first.
            truncated: Whether older lines existed beyond ``lines``.
            payload: Kind-specific data, JSON-encoded.

        Raises:
            InvalidArgumentError: If there is no step to attach the checkpoint to.
        """
        self._ex._checkpoint(
            summary, step, _CHECKPOINT_KINDS[kind], list(lines), truncated, payload
        )

    async def sleep(self, duration: float | timedelta) -> None:
        """Sleep durably: the run waits on a timer without holding the worker.

        The invocation ends ``waiting``; the coordinator fires the timer (after a
        restart too) and dispatches the run again, which replays to here and goes on.
        ``ctx.now()`` afterwards is the time the timer fired.

        Args:
            duration: Seconds, or a ``timedelta``; 0 or less wakes at once (still durably).
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        await self._ex._sleep_until(self._ex._now_ns + int(float(seconds) * 1e9))

    async def sleep_until(self, when: datetime) -> None:
        """Sleep durably until ``when`` (timezone-aware; naive means UTC); see :meth:`sleep`.

        Args:
            when: The time to wake.
        """
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
        await self._ex._sleep_until(ns)

    async def wait_for_signal(
        self,
        name: str,
        *,
        # A durable deadline kept by the coordinator, which asyncio.timeout cannot be.
        timeout: float | timedelta | None = None,  # noqa: ASYNC109
        type: Any = None,
    ) -> Any:
        """Wait durably for the run's next signal called ``name`` and return its payload.

        Signals wait in the run's inbox, so one sent before the wait is returned too;
        each signal is consumed by one wait, oldest first. While nothing has arrived
        the run waits without holding the worker.

        Args:
            name: The signal's name (``SignalRun``, ``ledgerflow run signal``).
            timeout: Give up after this long (seconds or ``timedelta``); None waits forever.
            type: Decode the payload as this type (dataclass, pydantic model, ...);
                None returns the JSON value.

        Returns:
            The signal's payload (None when it had none).

        Raises:
            WaitTimeoutError: ``timeout`` passed first (a normal error: catch it to
                carry on; replay raises it again at the same point).
        """
        seconds = None if timeout is None else _seconds(timeout)
        return await self._ex._wait_for_signal(name, seconds, type)

    async def start_child(
        self,
        workflow: str | WorkflowDefinition[Any, Any],
        input: Any = None,
        *,
        run_id: str | None = None,
        execution_timeout: float | timedelta | None = None,
    ) -> ChildHandle:
        """Start a child run of ``workflow`` durably; return its handle.

        The child is created once, whatever the replays (its id is
        ``<run_id>.child-<n>`` for the body's n-th child unless ``run_id`` is given)
        and records this run as its parent. The body goes on once it exists;
        ``await handle.result()`` waits for it without holding the worker. Cancelling
        this run cancels its unfinished children (each compensating).

        Args:
            workflow: The child's workflow: a definition, or a registered name.
            input: The child's input (JSON by default).
            run_id: The child's run id; default derived from this run's.
            execution_timeout: Bounds the child's whole life (seconds or timedelta).

        Returns:
            The child's handle.
        """
        child_run_id = self._ex._child_run_id(run_id)
        if isinstance(workflow, WorkflowDefinition):
            name, version = workflow.name, workflow.version
        else:
            name, version = workflow, ""
        request = run_service_pb2.StartRunRequest(
            workflow_name=name, workflow_version=version, run_id=child_run_id
        )
        if input is not None:
            request.input.CopyFrom(encode(input))
        if execution_timeout is not None:
            request.execution_timeout.FromTimedelta(timedelta(seconds=_seconds(execution_timeout)))
        await self._ex._start_child(child_run_id, request)
        return ChildHandle(self._ex, child_run_id)

    def compensate(self) -> NoReturn:
        """Stop the body and run the compensations of its completed steps, LIFO.

        The invocation ends ``compensated`` (or ``compensation_failed``).

        Raises:
            CompensateRequestedSignal: Always; let it propagate.
        """
        self._ex._request_compensation()


class ChildHandle:
    """A child run started by ``ctx.start_child``.

    Attributes:
        run_id: The child's run id.
    """

    def __init__(self, execution: WorkflowExecution, run_id: str) -> None:
        """Create the handle (``ctx.start_child`` does)."""
        self._ex = execution
        self.run_id = run_id

    async def result(self, *, type: Any = None) -> Any:
        """Wait durably for the child to end; return its result.

        Args:
            type: Decode the result as this type; None returns the JSON value.

        Raises:
            ChildRunFailedError: The child failed, was cancelled or timed out.
        """
        return await self._ex._child_result(self.run_id, type)


Context = WorkflowContext
"""Short alias: ``async def body(ctx: workflow.Context, order: Order)``."""


def _seconds(timeout: float | timedelta) -> float:
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if seconds <= 0:
        raise ValueError("timeout must be positive")
    return seconds


def metadata_target(name: MetadataTargetName) -> pb.MetadataTarget.ValueType:
    """Return the proto value of a metadata target name."""
    return _TARGETS[name]

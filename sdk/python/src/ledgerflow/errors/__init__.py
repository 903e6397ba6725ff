"""The one error hierarchy ledgerflow raises to user code.

Every error ledgerflow raises derives from :class:`LedgerflowError`, so callers
can catch ledgerflow's failures without catching their own. The coordinator's
store raises these domain errors where the condition is detected; only its gRPC
edge turns them into status codes, and the client turns status codes back into
them (see :data:`STATUS_CODE_NAMES`). Control flow inside workflow bodies
(waitpoints, cancellation) is not an error and does not live here: those signals
derive from ``BaseException`` and live in :mod:`ledgerflow.workflow`.

The workflow errors (:class:`NonDeterminismError`, :class:`StepFailedError`,
:class:`WorkflowNotFoundError`, :class:`WorkflowUsageError`) and
:class:`WorkerRefusedError` are raised inside a worker and never travel as a status
code, so they have no entry in :data:`STATUS_CODE_NAMES`. Neither do the run outcome errors
(:class:`RunEndedError` and its subclasses, :class:`ResultTimeoutError`): a client
raises them from a run's terminal snapshot, not from a failed call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledgerflow.v1 import common_pb2, ledger_pb2


class LedgerflowError(Exception):
    """Base for every error ledgerflow raises to user code."""


class InvalidArgumentError(LedgerflowError, ValueError):
    """A request or event is malformed; nothing was changed.

    Attributes:
        field: Dotted path of the offending field (empty when not about one field).
        problem: What is wrong with it.
    """

    def __init__(self, field: str, problem: str) -> None:
        """Create the error.

        Args:
            field: Dotted path of the offending field, e.g. ``step_started.step_id``.
            problem: What is wrong with it.
        """
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class InvalidEventError(InvalidArgumentError):
    """A ledger event is malformed; the message names the offending field."""


class RunNotFoundError(LedgerflowError, LookupError):
    """No run has the given id."""


class RunAlreadyExistsError(LedgerflowError):
    """A run with the given id exists and differs from what was asked for."""


class FailedPreconditionError(LedgerflowError):
    """The request is well-formed but the run's state forbids it (e.g. signal a finished run)."""


class PermissionDeniedError(LedgerflowError, PermissionError):
    """The caller's token does not allow the request (a missing scope, another namespace)."""


class PayloadTooLargeError(LedgerflowError):
    """A payload or batch exceeds the configured limit; it was refused whole, not truncated."""


class CoordinatorUnavailableError(LedgerflowError, ConnectionError):
    """The coordinator could not be reached or did not answer in time."""


class NonDeterminismError(LedgerflowError):
    """Replay found the body and the run's ledger disagree.

    Raised when the body issues a different step at an ordinal than the ledger
    recorded, no longer issues a step the ledger recorded, or a recorded output no
    longer decodes as the step's return type. It fails the workflow *task*, not the
    run: the worker hands the task back and a fixed deployment can continue the run
    from its ledger (Temporal fails the workflow task the same way).

    Attributes:
        ordinal: The step call's position in the body (from 1), 0 when not about one call.
        step_id: The step id the body issued, empty when none.
        recorded_step_id: The step id the ledger recorded at that position, empty when none.
    """

    def __init__(
        self, message: str, *, ordinal: int = 0, step_id: str = "", recorded_step_id: str = ""
    ) -> None:
        """Create the error.

        Args:
            message: What disagrees, naming the steps involved.
            ordinal: The step call's position in the body, 0 when not about one call.
            step_id: The step id the body issued.
            recorded_step_id: The step id the ledger recorded at that position.
        """
        super().__init__(message)
        self.ordinal = ordinal
        self.step_id = step_id
        self.recorded_step_id = recorded_step_id


class StepFailedError(LedgerflowError):
    """A workflow step failed for good (no retry left); raised by ``await ctx.step(...)``.

    The same error is raised live and on replay, built from the recorded
    ``ErrorInfo`` (on replay the original exception no longer exists), so a body
    that handles it behaves identically both times. Inspect ``error_type`` rather
    than the exception class of the original failure.

    Attributes:
        step_id: The step that failed.
        error: The recorded error: type, message, code, stack trace, cause.
        error_type: Shortcut for ``error.type``, e.g. ``"ValueError"`` or ``"TimeoutError"``.
        attempt: The attempt that failed last.
    """

    def __init__(self, step_id: str, error: common_pb2.ErrorInfo, *, attempt: int = 0) -> None:
        """Create the error.

        Args:
            step_id: The step that failed.
            error: The step's final error as the ledger records it.
            attempt: The attempt that failed last.
        """
        detail = f"{error.type}: {error.message}" if error.type else error.message
        super().__init__(f"step {step_id!r} failed: {detail}")
        self.step_id = step_id
        self.error = error
        self.error_type = error.type
        self.attempt = attempt


class ChildRunFailedError(LedgerflowError):
    """A child run the workflow body waited on did not complete.

    Attributes:
        run_id: The child run.
        status: How it ended: ``FAILED``, ``CANCELLED``, ``TIMED_OUT`` or ``TERMINATED``.
        error: Its error.
    """

    def __init__(self, run_id: str, error: common_pb2.ErrorInfo) -> None:
        """Create the error.

        Args:
            run_id: The child run.
            error: Its error; ``code`` holds how it ended.
        """
        self.run_id = run_id
        self.status = error.code or "FAILED"
        self.error = error
        detail = f"{error.type}: {error.message}" if error.type else error.message
        super().__init__(f"child run {run_id} {self.status.lower()}: {detail}")


class WaitTimeoutError(LedgerflowError, TimeoutError):
    """A durable wait (``ctx.wait_for_signal(..., timeout=)``) reached its deadline first.

    Raised in the workflow body, which may catch it like any error; replay raises it
    again at the same point.

    Attributes:
        waitpoint_id: The waitpoint that timed out.
        name: What it waited for (the signal's name).
    """

    def __init__(self, waitpoint_id: str, name: str) -> None:
        """Create the error.

        Args:
            waitpoint_id: The waitpoint that timed out.
            name: What it waited for.
        """
        super().__init__(f"timed out waiting for {name!r} ({waitpoint_id})")
        self.waitpoint_id = waitpoint_id
        self.name = name


class WorkflowNotFoundError(LedgerflowError, LookupError):
    """No registered workflow has the given name (and version)."""


class WorkflowUsageError(LedgerflowError, RuntimeError):
    """Workflow code used the API in a way it does not support.

    For example a step started inside another step, ``ctx.random()`` inside a
    step function, or a workflow body that is not an ``async def``.
    """


class RunEndedError(LedgerflowError):
    """A run ended without completing; raised by ``RunHandle.result()``.

    Catch it for every unsuccessful end, or a subclass for one terminal status:
    :class:`RunFailedError`, :class:`RunCancelledError`, :class:`RunTimedOutError`,
    :class:`RunTerminatedError`. Like :class:`StepFailedError` it carries the
    recorded ``ErrorInfo``, not the original exception, which lived in a worker.

    Attributes:
        run_id: The run.
        status: Its terminal ``RunStatus`` value.
        error: The run's recorded error (type, message, code, stack trace, cause);
            an empty ``ErrorInfo`` when none was recorded.
        error_type: Shortcut for ``error.type``, e.g. ``"ValueError"``.
        error_message: Shortcut for ``error.message``.
        snapshot: The terminal snapshot: steps, compensation report, partial result.
    """

    outcome = "ended without completing"
    """How the message words the end, e.g. ``"failed"``."""

    def __init__(self, snapshot: ledger_pb2.RunSnapshot) -> None:
        """Create the error.

        Args:
            snapshot: The run's terminal snapshot.
        """
        error = snapshot.error
        detail = f"{error.type}: {error.message}" if error.type else error.message
        super().__init__(
            f"run {snapshot.run_id} {self.outcome}" + (f": {detail}" if detail else "")
        )
        self.run_id = snapshot.run_id
        self.status = snapshot.status
        self.error = error
        self.error_type = error.type
        self.error_message = error.message
        self.snapshot = snapshot


class RunFailedError(RunEndedError):
    """The run failed: its body raised, or it was compensated after an error.

    ``snapshot.compensation`` says whether compensations ran and how they went.
    """

    outcome = "failed"


class RunCancelledError(RunEndedError):
    """The run was cancelled; ``error_message`` is the cancellation reason."""

    outcome = "was cancelled"


class RunTimedOutError(RunEndedError):
    """The run passed its execution timeout.

    Not a :class:`TimeoutError`: the run is over. Waiting that gives up while the run
    goes on raises :class:`ResultTimeoutError`.
    """

    outcome = "timed out"


class RunTerminatedError(RunEndedError):
    """An operator stopped the run without compensation; ``error_message`` is the reason."""

    outcome = "was terminated"


class ResultTimeoutError(LedgerflowError, TimeoutError):
    """Waiting for a run's result took longer than the caller allowed; the run goes on.

    Attributes:
        run_id: The run waited for.
        timeout: The seconds allowed.
        snapshot: The latest snapshot seen while waiting, None when none arrived.
    """

    def __init__(
        self, run_id: str, timeout: float, snapshot: ledger_pb2.RunSnapshot | None = None
    ) -> None:
        """Create the error.

        Args:
            run_id: The run waited for.
            timeout: The seconds allowed.
            snapshot: The latest snapshot seen while waiting.
        """
        super().__init__(f"run {run_id} did not end within {timeout:g}s")
        self.run_id = run_id
        self.timeout = timeout
        self.snapshot = snapshot


class WorkerRefusedError(LedgerflowError):
    """The coordinator refused a worker's session for good; ``Worker.run`` stops.

    Raised when the stream ends before ``welcome`` with a status that another
    attempt would meet again (``INVALID_ARGUMENT`` for a malformed ``hello``,
    ``UNIMPLEMENTED``, ``UNAUTHENTICATED``, ``PERMISSION_DENIED``). A coordinator
    that cannot be reached is not a refusal: the worker keeps reconnecting.

    Attributes:
        code: The gRPC status code's name, e.g. ``"INVALID_ARGUMENT"``.
        details: The coordinator's message.
    """

    def __init__(self, code: str, details: str, *, address: str = "") -> None:
        """Create the error.

        Args:
            code: The gRPC status code's name.
            details: The coordinator's message.
            address: The coordinator's address, named in the message.
        """
        where = f" at {address}" if address else ""
        super().__init__(f"the coordinator{where} refused the worker: {code}: {details}")
        self.code = code
        self.details = details


STATUS_CODE_NAMES: dict[type[LedgerflowError], str] = {
    InvalidArgumentError: "INVALID_ARGUMENT",
    RunNotFoundError: "NOT_FOUND",
    RunAlreadyExistsError: "ALREADY_EXISTS",
    FailedPreconditionError: "FAILED_PRECONDITION",
    PayloadTooLargeError: "RESOURCE_EXHAUSTED",
    PermissionDeniedError: "PERMISSION_DENIED",
    CoordinatorUnavailableError: "UNAVAILABLE",
}
"""The gRPC status code (by name) each error travels as; subclasses use their base's."""


__all__ = [
    "STATUS_CODE_NAMES",
    "ChildRunFailedError",
    "CoordinatorUnavailableError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "InvalidEventError",
    "LedgerflowError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ResultTimeoutError",
    "RunAlreadyExistsError",
    "RunCancelledError",
    "RunEndedError",
    "RunFailedError",
    "RunNotFoundError",
    "RunTerminatedError",
    "RunTimedOutError",
    "StepFailedError",
    "WaitTimeoutError",
    "WorkerRefusedError",
    "WorkflowNotFoundError",
    "WorkflowUsageError",
]

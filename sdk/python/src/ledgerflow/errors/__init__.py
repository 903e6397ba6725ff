"""The one error hierarchy ledgerflow raises to user code.

Every error ledgerflow raises derives from :class:`LedgerflowError`, so callers
can catch ledgerflow's failures without catching their own. The coordinator's
store raises these domain errors where the condition is detected; only its gRPC
edge turns them into status codes, and the client turns status codes back into
them (see :data:`STATUS_CODE_NAMES`). Control flow inside workflow bodies
(waitpoints, cancellation) is not an error and does not live here.
"""

from __future__ import annotations


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


class PayloadTooLargeError(LedgerflowError):
    """A payload or batch exceeds the configured limit; it was refused whole, not truncated."""


class CoordinatorUnavailableError(LedgerflowError, ConnectionError):
    """The coordinator could not be reached or did not answer in time."""


STATUS_CODE_NAMES: dict[type[LedgerflowError], str] = {
    InvalidArgumentError: "INVALID_ARGUMENT",
    RunNotFoundError: "NOT_FOUND",
    RunAlreadyExistsError: "ALREADY_EXISTS",
    FailedPreconditionError: "FAILED_PRECONDITION",
    PayloadTooLargeError: "RESOURCE_EXHAUSTED",
    CoordinatorUnavailableError: "UNAVAILABLE",
}
"""The gRPC status code (by name) each error travels as; subclasses use their base's."""


__all__ = [
    "STATUS_CODE_NAMES",
    "CoordinatorUnavailableError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "InvalidEventError",
    "LedgerflowError",
    "PayloadTooLargeError",
    "RunAlreadyExistsError",
    "RunNotFoundError",
]

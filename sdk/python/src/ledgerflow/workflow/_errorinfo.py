"""Exceptions → ``ErrorInfo``: how failures of user code are recorded in the ledger."""

from __future__ import annotations

import traceback

from ledgerflow.errors import StepFailedError
from ledgerflow.v1 import common_pb2

USER_ERROR = "USER_ERROR"
"""The category of errors raised by workflow or step code."""
CANCELLED = "CANCELLED"
"""The category of the error describing a cancellation."""

_MAX_STACK_CHARS = 8_000
_MAX_CAUSE_DEPTH = 8


def error_info(
    exc: BaseException,
    *,
    code: str = "",
    message: str | None = None,
    non_retryable: bool | None = None,
    _depth: int = 0,
) -> common_pb2.ErrorInfo:
    """Describe ``exc`` as an ``ErrorInfo``: class name, message, stack, explicit cause.

    A :class:`StepFailedError` keeps the step's recorded error as its cause, so a
    run failed by a step shows the step's original error type.

    Args:
        exc: The exception.
        code: A stable machine-readable code, e.g. ``"STEP_TIMEOUT"``.
        message: A message replacing ``str(exc)``.
        non_retryable: Overrides the exception's ``non_retryable`` attribute.

    Returns:
        The description.
    """
    info = common_pb2.ErrorInfo(
        type=type(exc).__name__,
        message=str(exc) if message is None else message,
        code=code or _str_attr(exc, "code"),
        category=USER_ERROR,
        non_retryable=(
            bool(getattr(exc, "non_retryable", False)) if non_retryable is None else non_retryable
        ),
    )
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
    info.stack_trace = stack[-_MAX_STACK_CHARS:]
    details = getattr(exc, "details", None)
    if isinstance(details, common_pb2.Payload):
        # Structured data an error chose to record (a command step's result envelope).
        info.details.CopyFrom(details)
    if isinstance(exc, StepFailedError):
        info.cause.CopyFrom(exc.error)
    elif exc.__cause__ is not None and _depth < _MAX_CAUSE_DEPTH:
        info.cause.CopyFrom(error_info(exc.__cause__, _depth=_depth + 1))
    return info


def _str_attr(exc: BaseException, name: str) -> str:
    value = getattr(exc, name, "")
    return value if isinstance(value, str) else ""

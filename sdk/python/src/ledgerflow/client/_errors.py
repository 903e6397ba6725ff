"""gRPC status codes turned back into ledgerflow's errors (shared by both clients)."""

from __future__ import annotations

import re

import grpc

from ledgerflow.errors import (
    STATUS_CODE_NAMES,
    CoordinatorUnavailableError,
    InvalidArgumentError,
    LedgerflowError,
)

# The inverse of the table the coordinator's edge uses, so the two cannot drift apart.
_ERROR_BY_CODE: dict[grpc.StatusCode, type[LedgerflowError]] = {
    grpc.StatusCode[name]: error for error, name in STATUS_CODE_NAMES.items()
}
# A deadline that passes is, to the caller, a coordinator that did not answer in time.
_ERROR_BY_CODE[grpc.StatusCode.DEADLINE_EXCEEDED] = CoordinatorUnavailableError

# The coordinator words INVALID_ARGUMENT details as "field: problem", where field is a
# snake_case proto path such as ``events[2].step_started.step_id``. Anything else (a
# capitalised word before a colon, a sentence) stays whole in ``problem``.
_FIELD_PROBLEM = re.compile(
    r"(?P<field>[a-z_][a-z0-9_]*(?:\[[^\]\s]*\])*(?:\.[a-z_][a-z0-9_]*(?:\[[^\]\s]*\])*)*)"
    r": (?P<problem>.+)",
    re.DOTALL,
)


def invalid_argument(details: str) -> InvalidArgumentError:
    """Build the error for INVALID_ARGUMENT details, splitting off the field when named."""
    match = _FIELD_PROBLEM.fullmatch(details)
    if match is None:
        return InvalidArgumentError("", details)
    return InvalidArgumentError(match["field"], match["problem"])


def unavailable(address: str, reason: str) -> CoordinatorUnavailableError:
    """Build the error for a coordinator that cannot be reached, naming its address."""
    return CoordinatorUnavailableError(f"cannot reach the coordinator at {address}: {reason}")


def from_rpc_error(err: grpc.RpcError, address: str) -> LedgerflowError:
    """Map a failed call to the ledgerflow error its status code stands for.

    Args:
        err: The error grpc raised (sync or asyncio).
        address: The coordinator's address, named in connection errors.

    Returns:
        The error to raise instead; the caller chains ``err`` as its cause.
    """
    # Only errors of a finished call carry a status; a bare RpcError (raised by some
    # interceptors) has neither code() nor details() at runtime, whatever the stubs say.
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    details = ""
    if callable(getattr(err, "code", None)):
        code = err.code()
        details = err.details() or ""
    error = _ERROR_BY_CODE.get(code)
    if error is InvalidArgumentError:
        return invalid_argument(details)
    if error is CoordinatorUnavailableError:
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return unavailable(address, f"no answer in time ({details or 'deadline exceeded'})")
        return unavailable(address, details or "unavailable")
    if error is not None:
        return error(details or code.name)
    return LedgerflowError(f"{code.name}: {details}" if details else code.name)

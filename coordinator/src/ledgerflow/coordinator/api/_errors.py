"""Domain errors → gRPC status codes: the only place the coordinator picks a code."""

from __future__ import annotations

import grpc

from ledgerflow.errors import STATUS_CODE_NAMES, LedgerflowError


def status_code_for(err: LedgerflowError) -> grpc.StatusCode:
    """Return the status code ``err`` travels as (by its nearest mapped base class)."""
    for cls in type(err).__mro__:
        name = STATUS_CODE_NAMES.get(cls)
        if name is not None:
            return grpc.StatusCode[name]
    return grpc.StatusCode.INTERNAL

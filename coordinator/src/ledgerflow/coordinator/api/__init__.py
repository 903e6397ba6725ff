"""The coordinator's gRPC edge: servicers, request validation, status codes."""

from ledgerflow.coordinator.api._errors import DomainErrorInterceptor, status_code_for
from ledgerflow.coordinator.api._run_service import Limits, RunService, summary_of
from ledgerflow.coordinator.api._tokens import PageTokens

__all__ = [
    "DomainErrorInterceptor",
    "Limits",
    "PageTokens",
    "RunService",
    "status_code_for",
    "summary_of",
]

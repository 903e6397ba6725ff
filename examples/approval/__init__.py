"""An approval: build a report, wait for a person's ``approve`` signal, publish with retries.

Serve it with ``ledgerflow worker examples.approval`` (or ``ledgerflow dev``) and
start it with ``python -m examples.approval [--approve-after S | --reject | --timeout S]``.
"""

from examples.approval.workflow import (
    SIGNAL,
    WORKFLOW_NAME,
    ApprovalExpiredError,
    ApprovalRejectedError,
    Publication,
    Report,
    Request,
    approval,
)

__all__ = [
    "SIGNAL",
    "WORKFLOW_NAME",
    "ApprovalExpiredError",
    "ApprovalRejectedError",
    "Publication",
    "Report",
    "Request",
    "approval",
]

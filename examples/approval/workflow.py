"""An approval workflow: build a report, wait for a person, publish with durable retries.

1. ``build_report`` (a step) drafts the report; its compensation withdraws the draft.
2. The body waits for the signal ``approve`` (``ctx.wait_for_signal``) with a durable
   deadline kept by the coordinator: no worker is held while a person thinks, and the
   deadline survives restarts. The payload decides: ``{"approved": true, "by": "ana"}``
   goes on; ``{"approved": false, ...}`` ends the run with ``ApprovalRejectedError``;
   no signal before the deadline (``workflow.WaitTimeoutError``) ends it with
   ``ApprovalExpiredError``. Either way the run fails and the draft is withdrawn, so
   ``run start --watch`` exits 1 and the live view shows the compensation.
3. ``publish`` talks to a flaky "publishing service": the first
   ``Request.publish_failures`` attempts fail (decided by the input, so the example is
   deterministic). Each attempt is its own step (``publish``, ``publish#2``, ...) with a
   durable ``ctx.sleep`` between them. Why not a ``RetryPolicy``: its backoff sleeps
   inside the worker, holding the run's slot; a durable sleep is a timer waitpoint
   (``sleep#n`` in the ledger), so a long pause between attempts costs nothing and a
   restart of every process in between does not lose it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ledgerflow import workflow

WORKFLOW_NAME = "examples.approval"
"""The name the workflow is registered and started under."""

SIGNAL = "approve"
"""The signal that decides the approval: payload ``{"approved": bool, "by": str}``."""


class ApprovalRejectedError(RuntimeError):
    """The approver said no."""


class ApprovalExpiredError(RuntimeError):
    """Nobody decided before the deadline."""


class PublishUnavailableError(RuntimeError):
    """The publishing service failed this attempt; another may succeed."""


@dataclass(frozen=True)
class Request:
    """The workflow's input.

    Attributes:
        report_id: The report's id.
        title: Its title.
        approval_timeout: Seconds to wait for the ``approve`` signal.
        publish_failures: How many publish attempts fail before one succeeds.
        max_publish_attempts: Give up after this many attempts.
        retry_delay: Seconds of durable sleep between publish attempts.
    """

    report_id: str
    title: str = "Quarterly ledger report"
    approval_timeout: float = 30.0
    publish_failures: int = 1
    max_publish_attempts: int = 3
    retry_delay: float = 1.0


@dataclass(frozen=True)
class Report:
    """A drafted report, waiting for approval."""

    report_id: str
    title: str
    sections: list[str]
    digest: str


@dataclass(frozen=True)
class Publication:
    """The workflow's result."""

    report_id: str
    url: str
    approved_by: str
    attempts: int


def build_report(ctx: workflow.Context, request: Request) -> Report:
    """Draft the report, one section at a time."""
    sections = ["summary", "revenue", "risks"]
    for done, section in enumerate(sections, 1):
        ctx.progress(completed=done, total=len(sections), message=section)
    digest = hashlib.sha256(f"{request.report_id}:{request.title}".encode()).hexdigest()[:12]
    ctx.log.info("drafted %s (%d sections, digest %s)", request.report_id, len(sections), digest)
    return Report(request.report_id, request.title, sections, digest)


def publish(ctx: workflow.Context, request: Request, report: Report, attempt: int) -> str:
    """Publish the approved report; the first ``publish_failures`` attempts fail."""
    if attempt <= request.publish_failures:
        raise PublishUnavailableError(f"publishing service unavailable (attempt {attempt})")
    url = f"https://reports.example/{report.report_id}/{report.digest}"
    ctx.log.info("published %s", url)
    return url


@workflow.defn(name=WORKFLOW_NAME)
async def approval(ctx: workflow.Context, request: Request) -> Publication:
    """Build, wait for approval (with a deadline), publish with durable retries."""

    def withdraw(report: Report) -> None:
        ctx.log.info("withdrew draft %s", report.report_id)

    report = await ctx.step("build_report", build_report, ctx, request, compensate=withdraw)
    ctx.log.info("waiting up to %gs for the %r signal", request.approval_timeout, SIGNAL)
    try:
        decision: Any = await ctx.wait_for_signal(SIGNAL, timeout=request.approval_timeout)
    except workflow.WaitTimeoutError:
        raise ApprovalExpiredError(
            f"no decision on {report.report_id} within {request.approval_timeout:g}s"
        ) from None
    decision = decision if isinstance(decision, dict) else {}
    approver = str(decision.get("by") or "someone")
    if not decision.get("approved"):
        raise ApprovalRejectedError(f"{approver} rejected {report.report_id}")
    ctx.log.info("approved by %s", approver)

    attempt = 1
    while True:
        try:
            url = await ctx.step("publish", publish, ctx, request, report, attempt)
            break
        except workflow.StepFailedError as err:
            if err.error_type != "PublishUnavailableError":
                raise
            if attempt >= request.max_publish_attempts:
                raise
            ctx.log.warn("publish attempt %d failed; retrying in %gs", attempt, request.retry_delay)
        await ctx.sleep(request.retry_delay)
        attempt += 1
    return Publication(report.report_id, url, approver, attempt)

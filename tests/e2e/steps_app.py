"""A step worker for the end-to-end tests: serves steps of kinds ``upper`` and ``review``."""

from __future__ import annotations

import os
import time

from ledgerflow.worker import NeedsHuman, StepContext, Worker
from ledgerflow.workflow import Registry


def upper(text: str, ctx: StepContext) -> str:
    """Shout ``text``; ``boom`` fails."""
    ctx.log.info("upper %s (attempt %d)", text, ctx.attempt)
    ctx.progress(completed=1, total=1, message="shouted")
    while text == "slow" and not ctx.cancelled:  # until the step's timeout stops it
        time.sleep(0.01)
    if text == "boom":
        raise ValueError("cannot shout boom")
    return text.upper()


def review(refund: dict[str, object], ctx: StepContext) -> object:
    """A refund over 10 needs a person; smaller ones are approved here."""
    if float(refund["amount"]) > 10:  # type: ignore[arg-type]
        raise NeedsHuman(f"approve the refund of {refund['amount']} EUR")
    return {"approved": True, "by": "policy"}


worker = Worker(
    os.environ["LEDGERFLOW_ADDRESS"], Registry([]), steps={"upper": upper, "review": review}
)

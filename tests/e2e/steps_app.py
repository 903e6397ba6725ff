"""A step worker for the end-to-end tests: serves steps of kind ``upper``, no workflow."""

from __future__ import annotations

import os

from ledgerflow.worker import StepContext, Worker
from ledgerflow.workflow import Registry


def upper(text: str, ctx: StepContext) -> str:
    """Shout ``text``; ``boom`` fails."""
    ctx.log.info("upper %s (attempt %d)", text, ctx.attempt)
    ctx.progress(completed=1, total=1, message="shouted")
    if text == "boom":
        raise ValueError("cannot shout boom")
    return text.upper()


worker = Worker(os.environ["LEDGERFLOW_ADDRESS"], Registry([]), steps={"upper": upper})

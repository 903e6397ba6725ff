"""A Python workflow with a step in TypeScript: release notes rendered by a Node worker.

The body collects the changes (a Python step), then hands them to a step on the
worker kind ``polyglot-ts`` (``ctx.step("render_notes", changes,
worker_kind=...)``): ``examples/polyglot/worker.ts``, a ``StepWorker`` of the
TypeScript SDK, renders Markdown, reports progress per change and logs as it goes.
While the step runs elsewhere the run waits on the waitpoint ``step:render_notes``
without holding the Python worker; the TypeScript step's logs, progress and output
land in this run's ledger like any step's.

No TypeScript worker connected means the run waits (visible as an open waitpoint
in ``ledgerflow run watch``) until one connects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledgerflow import workflow

WORKFLOW_NAME = "examples.polyglot"
"""The name the workflow is registered and started under."""

WORKER_KIND = "polyglot-ts"
"""The step kind the TypeScript worker (``worker.ts``) registers."""


@dataclass(frozen=True)
class Release:
    """The workflow's input.

    Attributes:
        version: The release's version.
        changes: What changed, one line each; a few made-up ones when empty.
    """

    version: str = "1.0.0"
    changes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Notes:
    """The workflow's result: what the TypeScript step rendered."""

    version: str
    markdown: str
    sha256: str
    rendered_by: str


def collect_changes(release: Release) -> list[str]:
    """The changes to announce (a stand-in for reading a changelog)."""
    return release.changes or [
        "durable timers and signal waits",
        "steps on TypeScript workers",
        "live CLI views",
    ]


@workflow.defn(name=WORKFLOW_NAME)
async def polyglot(ctx: workflow.Context, release: Release) -> Notes:
    """Collect changes in Python, render the notes in TypeScript."""
    changes = await ctx.step("collect_changes", collect_changes, release)
    ctx.log.info("asking typescript to render %d changes", len(changes))
    rendered = await ctx.step(
        "render_notes",
        {"version": release.version, "changes": changes},
        worker_kind=WORKER_KIND,
        timeout=60,
    )
    ctx.log.info("rendered by %s (%s)", rendered["by"], rendered["sha256"][:12])
    return Notes(release.version, rendered["markdown"], rendered["sha256"], rendered["by"])

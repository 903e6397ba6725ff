"""The workflow of the command-step end-to-end test, served by ``ledgerflow worker``."""

from __future__ import annotations

import sys

from ledgerflow import workflow

# Three lines on stdout, two on stderr, then exit status 3.
SCRIPT = """
import sys
for i in range(3):
    print(f"out {i}", flush=True)
    if i < 2:
        print(f"err {i}", file=sys.stderr, flush=True)
sys.exit(3)
"""


@workflow.defn(name="command")
async def command(ctx: workflow.Context) -> dict[str, object]:
    """Run one command step that fails with exit code 3 (returned, not raised: ``check=False``)."""
    result = await ctx.run_command([sys.executable, "-c", SCRIPT], name="script", check=False)
    return {
        "exit_code": result.exit_code,
        "outcome": result.outcome,
        "stdout_lines": result.metrics.stdout_line_count,
        "stderr_lines": result.metrics.stderr_line_count,
    }

"""``python -m examples.command_pipeline [--stages N]``: start a build and watch it live.

Needs a coordinator with a worker serving the workflow (``ledgerflow dev`` from the
repository root runs both). Exit status: 0 completed, 1 not, 2 an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from examples.command_pipeline.workflow import WORKFLOW_NAME
from ledgerflow.cli import main as ledgerflow


def main(argv: list[str] | None = None) -> int:
    """Start one pipeline run and follow it to its end; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.command_pipeline", description=__doc__
    )
    parser.add_argument("--stages", type=int, default=3, help="modules to generate")
    parser.add_argument(
        "--workdir", default=None, help="where the worker builds (default: a new temp dir)"
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("LEDGERFLOW_ADDRESS") or "127.0.0.1:7170",
        help="the coordinator (env LEDGERFLOW_ADDRESS; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print snapshots as JSON lines")
    args = parser.parse_args(argv)
    pipeline = {"stages": args.stages, "workdir": args.workdir}
    command = ["run", "start", WORKFLOW_NAME, "--input", json.dumps(pipeline), "--watch"]
    command += ["--address", args.address]
    if args.json:
        command.append("--json")
    return ledgerflow(command)


if __name__ == "__main__":
    sys.exit(main())

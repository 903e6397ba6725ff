"""``python -m examples.polyglot``: start a run whose step runs in TypeScript; watch it.

Three processes take part (three terminals, from the repository root):

1. ``ledgerflow dev`` — the coordinator and a Python worker serving ``examples``
   (this workflow included);
2. the TypeScript step worker, run by Node with tsx from ``sdk/typescript`` (whose
   ``node_modules`` hold tsx and the SDK's dependencies)::

       (cd sdk/typescript && npm ci --ignore-scripts)   # once
       cd sdk/typescript && node --import tsx ../../examples/polyglot/worker.ts

   (``LEDGERFLOW_ADDRESS`` names the coordinator; ``ledgerflow dev`` does not start
   it: it serves Python modules only);
3. this starter. Without the TypeScript worker the run waits on ``step:render_notes``
   until one connects.

Type-check the worker with ``sdk/typescript/node_modules/.bin/tsc --noEmit -p
examples/polyglot``. Exit status: 0 completed, 1 not, 2 an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from examples.polyglot.workflow import WORKFLOW_NAME
from ledgerflow.cli import main as ledgerflow


def main(argv: list[str] | None = None) -> int:
    """Start one release-notes run and follow it to its end; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.polyglot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", default="1.0.0", help="the release (default %(default)s)")
    parser.add_argument(
        "--change", action="append", default=[], help="a change to announce (repeatable)"
    )
    parser.add_argument("--run-id", default=None, help="default: the coordinator's")
    parser.add_argument(
        "--address",
        default=os.environ.get("LEDGERFLOW_ADDRESS") or "127.0.0.1:7170",
        help="the coordinator (env LEDGERFLOW_ADDRESS; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print snapshots as JSON lines")
    args = parser.parse_args(argv)
    release = {"version": args.version, "changes": args.change}
    command = ["run", "start", WORKFLOW_NAME, "--input", json.dumps(release), "--watch"]
    command += ["--address", args.address]
    if args.run_id:
        command += ["--run-id", args.run_id]
    if args.json:
        command.append("--json")
    return ledgerflow(command)


if __name__ == "__main__":
    sys.exit(main())

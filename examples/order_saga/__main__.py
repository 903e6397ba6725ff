"""``python -m examples.order_saga [--fail-at ship]``: start an order and watch it live.

Needs a coordinator with a worker serving the workflow (``ledgerflow dev`` from the
repository root runs both). The exit status is the run's outcome, as for
``ledgerflow run start --watch``: 0 completed, 1 not completed (e.g. compensated
after ``--fail-at ship``), 2 an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from examples.order_saga.workflow import STEPS, WORKFLOW_NAME
from ledgerflow.cli import main as ledgerflow


def main(argv: list[str] | None = None) -> int:
    """Start one order saga and follow it to its end; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m examples.order_saga", description=__doc__)
    parser.add_argument(
        "--fail-at",
        choices=[*STEPS, "reserve", "charge"],
        help="make this step fail, to see the completed ones compensated in reverse",
    )
    parser.add_argument("--order-id", default=None, help="default: a new random id")
    parser.add_argument("--quantity", type=int, default=2)
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=0.6,
        help="simulated duration of each step (default %(default)s)",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("LEDGERFLOW_ADDRESS") or "127.0.0.1:7170",
        help="the coordinator (env LEDGERFLOW_ADDRESS; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print snapshots as JSON lines")
    args = parser.parse_args(argv)
    order_id = args.order_id or f"o-{uuid.uuid4().hex[:8]}"
    order = {
        "order_id": order_id,
        "quantity": args.quantity,
        "fail_at": args.fail_at,
        "step_seconds": args.step_seconds,
    }
    command = ["run", "start", WORKFLOW_NAME, "--input", json.dumps(order)]
    command += ["--run-id", f"order-{order_id}", "--watch", "--address", args.address]
    if args.json:
        command.append("--json")
    return ledgerflow(command)


if __name__ == "__main__":
    sys.exit(main())

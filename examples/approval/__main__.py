"""``python -m examples.approval``: start a report approval, decide it, and watch it live.

Needs a coordinator with a worker serving the workflow (``ledgerflow dev`` from the
repository root runs both). The starter plays the approver too: once the run waits
for the ``approve`` signal it waits ``--approve-after`` seconds and sends
``{"approved": true, "by": ...}`` — as ``ledgerflow run signal RUN approve --payload
'{"approved": true, "by": "ana"}'`` would from another terminal. ``--reject`` sends
``"approved": false`` instead; ``--timeout S`` sends nothing and lets the approval
expire after S seconds; ``--manual`` sends nothing and prints the command to send.

Exit status, as for ``ledgerflow run start --watch``: 0 published, 1 not (rejected,
expired), 2 an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid

from examples.approval.workflow import SIGNAL, WORKFLOW_NAME
from ledgerflow.cli import main as ledgerflow
from ledgerflow.client import SyncClient

# How long the demo waits for a decision when it makes one itself.
_DEFAULT_APPROVAL_TIMEOUT = 30.0


def _decide(address: str, run_id: str, delay: float, payload: dict[str, object]) -> None:
    """Once the run waits for the signal, wait ``delay`` seconds (a person), then send it."""
    try:
        with SyncClient.connect(address, connect_timeout=10) as client:
            for snap in client.watch_run(run_id):
                if any(w.name == SIGNAL for w in snap.open_waitpoints):
                    break
            else:
                return  # the run ended without waiting: nothing to decide
            time.sleep(delay)  # the approver reading the report
            client.signal_run(run_id, SIGNAL, payload, request_id=f"{run_id}-decision")
    except Exception as err:  # a demo helper: say what went wrong, once
        sys.stderr.write(f"could not send the {SIGNAL!r} signal: {err}\n")


def main(argv: list[str] | None = None) -> int:
    """Start one approval run, decide it as asked, and follow it to its end."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.approval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decision = parser.add_mutually_exclusive_group()
    decision.add_argument(
        "--approve-after",
        type=float,
        metavar="SECONDS",
        default=2.0,
        help="approve this long after the run starts waiting (default %(default)s)",
    )
    decision.add_argument(
        "--reject", action="store_true", help="reject instead: the draft is withdrawn"
    )
    decision.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=None,
        help="send nothing; the approval expires after SECONDS",
    )
    decision.add_argument(
        "--manual",
        action="store_true",
        help="send nothing; decide yourself with `ledgerflow run signal`",
    )
    parser.add_argument("--report-id", default=None, help="default: a new random id")
    parser.add_argument("--approver", default="ana", help="who approves (default %(default)s)")
    parser.add_argument(
        "--publish-failures",
        type=int,
        default=1,
        help="publish attempts that fail before one succeeds (default %(default)s)",
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        help="durable sleep between publish attempts, seconds (default %(default)s)",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("LEDGERFLOW_ADDRESS") or "127.0.0.1:7170",
        help="the coordinator (env LEDGERFLOW_ADDRESS; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print snapshots as JSON lines")
    args = parser.parse_args(argv)
    report_id = args.report_id or f"r-{uuid.uuid4().hex[:8]}"
    run_id = f"approval-{report_id}"
    request = {
        "report_id": report_id,
        "approval_timeout": args.timeout if args.timeout is not None else _DEFAULT_APPROVAL_TIMEOUT,
        "publish_failures": args.publish_failures,
        "retry_delay": args.retry_delay,
    }
    flags = ["--address", args.address] + (["--json"] if args.json else [])
    # Start first, then watch: the approver below watches the run, so it must exist.
    start = ["run", "start", WORKFLOW_NAME, "--input", json.dumps(request), "--run-id", run_id]
    status = ledgerflow([*start, *flags])
    if status != 0:
        return status
    if args.manual:
        sys.stderr.write(
            f"decide with: ledgerflow run signal {run_id} {SIGNAL} --payload "
            f'\'{{"approved": true, "by": "{args.approver}"}}\' --address {args.address}\n'
        )
    elif args.timeout is None:
        payload = {"approved": not args.reject, "by": args.approver}
        delay = 0.0 if args.reject else args.approve_after
        threading.Thread(
            target=_decide, args=(args.address, run_id, delay, payload), daemon=True
        ).start()
    return ledgerflow(["run", "watch", run_id, *flags])


if __name__ == "__main__":
    sys.exit(main())

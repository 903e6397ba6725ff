"""``ledgerflow run ...``: start, follow, inspect and control runs on a running coordinator.

Every command takes ``--address HOST:PORT`` (env ``LEDGERFLOW_ADDRESS``, default
``127.0.0.1:7170``) and ``--json`` (one JSON object per line, proto messages in proto
JSON).

``--namespace NS`` (env ``LEDGERFLOW_NAMESPACE``) is where ``start`` creates runs and
what ``list`` shows; without it the coordinator decides (the token's namespace, else
``default`` for new runs and every namespace for ``list``). The other commands find a
run by its id, which is unique across namespaces. People see a run's namespace only
when it is not ``default``; ``--json`` always carries it.

``watch``, ``start --watch`` and ``result`` follow a run to its end; ``watch`` shows
it live (see ``_live``: a redrawn rich view on a terminal, a line per change on a
pipe).

Exit status, the same for every ``run`` command:

- 0: done; for ``watch``, ``result`` and ``start --watch``, the run completed;
- 1: the run they followed ended without completing: failed (compensated or not),
  cancelled, timed out or terminated;
- 2: an error, as one line ``ledgerflow: <message>`` on stderr: bad input, a
  coordinator that refused (``run X not found``) or could not be reached within 5 s,
  ``result --timeout`` expired;
- 130: interrupted (Ctrl-C).

So 1 always means "the run did not succeed" and never "the command went wrong".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from ledgerflow.cli._common import (
    EXIT_USAGE,
    add_connection_flags,
    add_namespace_flag,
    connection_settings,
)
from ledgerflow.cli._live import (
    EXIT_COMPLETED,
    EXIT_RUN_DID_NOT_COMPLETE,
    LineView,
    enum_name,
    format_error,
    format_namespace,
    format_payload,
    format_time,
    make_view,
    outcome_line,
    outcome_status,
    run_status,
)
from ledgerflow.client import SyncClient
from ledgerflow.errors import (
    LedgerflowError,
    ResultTimeoutError,
    RunEndedError,
    RunNotFoundError,
)
from ledgerflow.ledger import is_terminal
from ledgerflow.v1 import ledger_pb2

DEFAULT_ADDRESS = "127.0.0.1:7170"
"""Where the coordinator listens unless ``--address`` or ``LEDGERFLOW_ADDRESS`` say otherwise."""

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for the coordinator: a refused connection fails at once, a silent one here."""

EXIT_ERROR = EXIT_USAGE
"""An error: the coordinator refused or was unreachable (as for bad input: one line, 2)."""
EXIT_INTERRUPTED = 130

_STATUS_CHOICES = [
    _value.name.removeprefix("RUN_STATUS_").lower()
    for _value in ledger_pb2.RunStatus.DESCRIPTOR.values
    if _value.number != ledger_pb2.RUN_STATUS_UNSPECIFIED
]

_EVENT_SUBJECT_FIELDS = ("step_id", "waitpoint_id", "name")

# A body returns its exit status, or None for 0.
_Body = Callable[[SyncClient, argparse.Namespace], int | None]


def register(commands: Any) -> None:
    """Add the ``run`` command group to the top-level subcommands."""
    run = commands.add_parser(
        "run",
        help="inspect and control runs on a coordinator",
        description="Inspect and control runs on a running coordinator.",
    )
    sub = run.add_subparsers(dest="run_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        metavar="HOST:PORT",
        default=os.environ.get("LEDGERFLOW_ADDRESS") or DEFAULT_ADDRESS,
        help="the coordinator (env LEDGERFLOW_ADDRESS; default %(default)s)",
    )
    add_connection_flags(common)
    add_namespace_flag(
        common,
        "the namespace `start` creates runs in and `list` shows; other commands find "
        "a run by id in any namespace",
        "the token's namespace, else `default` for new runs and all for `list`",
    )
    common.add_argument(
        "--json", action="store_true", help="print one JSON object per line (proto JSON)"
    )

    cmd = sub.add_parser(
        "start",
        parents=[common],
        help="start a run of a workflow",
        description=(
            "Start a run of WORKFLOW and print its id, or the id of the run a repeated "
            "--run-id or --idempotency-key started before. With --watch, follow the run "
            "as `run watch` does until it ends: exit status 0 when it completed, 1 when "
            "it failed, was cancelled, timed out or was terminated, 2 on an error."
        ),
    )
    cmd.add_argument("workflow", metavar="WORKFLOW", help="the workflow's registered name")
    cmd.add_argument(
        "--input",
        type=_json_value,
        default=None,
        metavar="JSON",
        help="the run's input, a JSON value (default: null)",
    )
    cmd.add_argument(
        "--run-id", default="", metavar="ID", help="the run's id (default: the coordinator's)"
    )
    cmd.add_argument(
        "--idempotency-key",
        default="",
        metavar="KEY",
        help="a repeated start with this key returns the first run instead of a new one",
    )
    cmd.add_argument(
        "--tag",
        action="append",
        default=[],
        dest="tags",
        metavar="TAG",
        help="label the run (repeatable)",
    )
    cmd.add_argument(
        "--workflow-version",
        default="",
        metavar="VERSION",
        help="pin a workflow version (default: any)",
    )
    cmd.add_argument(
        "--watch",
        action="store_true",
        help="follow the run until it ends; exit 1 unless it completed",
    )
    cmd.set_defaults(handler=_connected(_start))

    cmd = sub.add_parser("list", parents=[common], help="list runs, newest first")
    cmd.add_argument(
        "--status",
        action="append",
        default=[],
        choices=_STATUS_CHOICES,
        help="keep runs in this status (repeatable)",
    )
    cmd.add_argument("--workflow", default="", help="keep runs of this workflow")
    cmd.add_argument(
        "--created-after",
        type=_aware_datetime,
        metavar="TIME",
        help="keep runs created at or after this ISO 8601 time (UTC unless it has an offset)",
    )
    cmd.add_argument(
        "--created-before",
        type=_aware_datetime,
        metavar="TIME",
        help="keep runs created before this ISO 8601 time (UTC unless it has an offset)",
    )
    cmd.add_argument(
        "--limit",
        type=_non_negative_int,
        default=50,
        metavar="N",
        help="print at most N runs; 0 prints all (default %(default)s)",
    )
    cmd.set_defaults(handler=_connected(_list))

    cmd = sub.add_parser("show", parents=[common], help="show a run: status, steps, log tail")
    cmd.add_argument("run_id", metavar="RUN_ID")
    cmd.add_argument(
        "--log-lines",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="show the last N lines of the log tail (default %(default)s)",
    )
    cmd.set_defaults(handler=_connected(_show))

    cmd = sub.add_parser("events", parents=[common], help="print a run's ledger events")
    cmd.add_argument("run_id", metavar="RUN_ID")
    cmd.add_argument(
        "--after",
        type=_non_negative_int,
        default=0,
        metavar="SEQ",
        help="start after this seq (default: from the first event)",
    )
    cmd.set_defaults(handler=_connected(_events))

    cmd = sub.add_parser("logs", parents=[common], help="print a run's log lines")
    cmd.add_argument("run_id", metavar="RUN_ID")
    cmd.add_argument(
        "--from",
        dest="from_seq",
        type=_non_negative_int,
        default=0,
        metavar="SEQ",
        help="start at this line seq (default: the first line)",
    )
    cmd.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the run ends"
    )
    cmd.set_defaults(handler=_connected(_logs))

    cmd = sub.add_parser("cancel", parents=[common], help="ask for a run to be cancelled")
    cmd.add_argument("run_id", metavar="RUN_ID")
    cmd.add_argument("--reason", default="", help="recorded in the ledger")
    cmd.add_argument("--identity", default="", help="who asks (default: user@host)")
    cmd.set_defaults(handler=_connected(_cancel))

    cmd = sub.add_parser("signal", parents=[common], help="send a signal to a run")
    cmd.add_argument("run_id", metavar="RUN_ID")
    cmd.add_argument("name", metavar="NAME", help="the signal's name")
    cmd.add_argument(
        "--payload",
        type=_json_value,
        default=None,
        metavar="JSON",
        help="the signal's body, a JSON value (default: null)",
    )
    cmd.add_argument("--request-id", default="", help="deduplicates a retried send")
    cmd.add_argument("--identity", default="", help="who sends (default: user@host)")
    cmd.set_defaults(handler=_connected(_signal))

    cmd = sub.add_parser(
        "watch",
        parents=[common],
        help="show a run live until it ends; the exit status is its outcome",
        description=(
            "Show the run until it ends. On a terminal: one screen redrawn live (status, "
            "steps with state, duration and progress, open waitpoints, compensations, the "
            "log tail). Otherwise: one line per change, '<time>  <subject>  <what>'. Then "
            "the outcome: 'result  <JSON>' or '<status>  <error>'. With --json: every "
            "snapshot. Exit status 0 when the run completed, 1 when it did not, 2 on an "
            "error."
        ),
    )
    cmd.add_argument("run_id", metavar="RUN_ID")
    cmd.add_argument(
        "--after",
        type=_non_negative_int,
        default=0,
        metavar="SEQ",
        help="resume: skip the first snapshot unless the run changed after this seq",
    )
    cmd.set_defaults(handler=_connected(_watch))

    cmd = sub.add_parser(
        "result",
        parents=[common],
        help="wait for a run to end and print its result",
        description=(
            "Wait until the run ends. Completed: print its result as one JSON line, exit 0. "
            "Otherwise: print '<status>  <error>' on stderr (with --json, an object on "
            "stdout), exit 1. Errors (unknown run, unreachable coordinator, --timeout "
            "expired) exit 2."
        ),
    )
    cmd.add_argument("run_id", metavar="RUN_ID")
    cmd.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="give up after this long (exit 2); default: wait as long as it takes",
    )
    cmd.set_defaults(handler=_connected(_result))


# --- argument types (argparse turns their errors into one usage line, exit 2) ----------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    # Every time the CLI prints is UTC, so a time typed without an offset is read as UTC too.
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _json_value(text: str) -> object:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None


# --- running a command against the coordinator ------------------------------------------


def _fail(message: str) -> int:
    sys.stderr.write(f"ledgerflow: {message}\n")
    return EXIT_ERROR


def _connected(body: _Body) -> Callable[[argparse.Namespace], int]:
    """Wrap a command body: connect, run it, turn ledgerflow errors into one line, exit 1."""

    def handler(args: argparse.Namespace) -> int:
        try:
            settings = connection_settings(args)
            with SyncClient.connect(
                args.address,
                connect_timeout=CONNECT_TIMEOUT,
                token=settings.token,
                credentials=settings.credentials,
                namespace=settings.namespace,
            ) as client:
                status = body(client, args)
                sys.stdout.flush()
        except RunNotFoundError as err:
            run_id = getattr(args, "run_id", None)
            return _fail(f"run {run_id} not found" if run_id else str(err))
        except LedgerflowError as err:
            return _fail(str(err))
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep the interpreter's
            # final flush of stdout from reporting the same broken pipe again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        return status or 0

    return handler


# --- output -------------------------------------------------------------------------------


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _json(message: Message, **extra: object) -> None:
    obj: dict[str, object] = {**extra, **json_format.MessageToDict(message)}
    _out(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        _out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# Shared with the live view, so a run reads the same everywhere.
_time = format_time
_namespace = format_namespace
_payload = format_payload
_error = format_error
_enum_name = enum_name
_status = run_status


# --- commands -----------------------------------------------------------------------------


def _list(client: SyncClient, args: argparse.Namespace) -> None:
    rows: list[list[str]] = []
    token = ""
    more = False
    while True:
        want = 1000 if args.limit == 0 else min(args.limit - len(rows), 1000)
        page = client.list_runs(
            statuses=args.status,
            workflow_name=args.workflow,
            created_after=args.created_after,
            created_before=args.created_before,
            page_size=want,
            page_token=token,
        )
        for run in page.runs[:want]:
            if args.json:
                _json(run)
            rows.append(
                [
                    _namespace(run.namespace),
                    run.run_id,
                    run.workflow_name,
                    _status(run.status),
                    _time(run.create_time),
                    _time(run.update_time),
                ]
            )
        token = page.next_page_token
        if not token:
            break
        if args.limit and len(rows) >= args.limit:
            more = True
            break
    if args.json:
        return
    if not rows:
        _out("no runs")
        return
    header = ["NAMESPACE", "RUN ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED"]
    if not any(row[0] for row in rows):
        # Every run is in the default namespace: the column would say nothing.
        header, rows = header[1:], [row[1:] for row in rows]
    _table(header, rows)
    if more:
        sys.stderr.write(f"(first {args.limit} runs shown; --limit 0 shows all)\n")


def _show(client: SyncClient, args: argparse.Namespace) -> None:
    snap = client.get_run(args.run_id)
    if args.json:
        _json(snap)
        return
    fields: list[tuple[str, str]] = [("run", snap.run_id)]
    if _namespace(snap.namespace):
        fields.append(("namespace", snap.namespace))
    fields += [
        ("workflow", " ".join(filter(None, [snap.workflow_name, snap.workflow_version]))),
        ("status", _status(snap.status)),
        ("created", _time(snap.create_time)),
        ("started", _time(snap.start_time)),
        ("updated", _time(snap.update_time)),
        ("finished", _time(snap.finish_time)),
    ]
    if snap.HasField("duration"):
        fields.append(("duration", f"{snap.duration.ToTimedelta().total_seconds():.3f}s"))
    if snap.tags:
        fields.append(("tags", ", ".join(snap.tags)))
    if snap.parent_run_id:
        fields.append(("parent", snap.parent_run_id))
    if snap.HasField("active_step_id"):
        fields.append(("active step", snap.active_step_id))
    fields.extend(
        (
            "waiting on",
            f"{_enum_name(ledger_pb2.WaitpointKind, wp.kind, 'WAITPOINT_KIND_')} {wp.name}"
            + (f" until {_time(wp.deadline_time)}" if wp.HasField("deadline_time") else ""),
        )
        for wp in snap.open_waitpoints
    )
    if snap.cancel_requested:
        fields.append(("cancel", f"requested: {snap.cancel_reason or '(no reason)'}"))
    if snap.HasField("error"):
        fields.append(("error", _error(snap.error)))
    if snap.HasField("result"):
        fields.append(("result", _payload(snap.result)))
    fields.append(("last seq", str(snap.last_seq)))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        _out(f"{name.ljust(width)}  {value}".rstrip())

    if snap.ordered_step_ids:
        _out(f"steps ({len(snap.ordered_step_ids)}):")
        rows = []
        for step_id in snap.ordered_step_ids:
            step = snap.steps[step_id]
            detail = []
            if step.attempt > 1:
                detail.append(f"attempt {step.attempt}")
            progress = step.progress
            if progress.HasField("total"):
                detail.append(f"{progress.completed}/{progress.total}")
            if step.HasField("error"):
                detail.append(_error(step.error))
            rows.append(
                [
                    "  " + step_id,
                    _enum_name(ledger_pb2.StepStatus, step.status, "STEP_STATUS_"),
                    "  ".join(detail),
                ]
            )
        _table(["  STEP", "STATUS", ""], rows)
    if args.log_lines and snap.log_tail:
        tail = snap.log_tail[-args.log_lines :]
        _out(f"logs (last {len(tail)} of {snap.total_log_count} lines):")
        for line in tail:
            _out("  " + line)


def _events(client: SyncClient, args: argparse.Namespace) -> None:
    for event in client.iter_events(args.run_id, args.after):
        if args.json:
            _json(event)
            continue
        kind = event.WhichOneof("payload")
        parts = [str(event.seq), _time(event.event_time, millis=True), kind or "-"]
        if kind is not None:
            body = getattr(event, kind)
            # The one field that says what the event is about, where its type has one.
            parts.extend(
                str(getattr(body, name))
                for name in _EVENT_SUBJECT_FIELDS
                if getattr(body, name, "")
            )
        _out(" ".join(parts))


def _logs(client: SyncClient, args: argparse.Namespace) -> None:
    for line in client.tail_logs(args.run_id, from_seq=args.from_seq, follow=args.follow):
        if args.json:
            _json(line)
        else:
            _out(f"{line.seq} {line.channel} {line.text}")
        if args.follow:
            # Followed lines arrive one by one; a pipe would otherwise hold them back.
            sys.stdout.flush()


def _cancel(client: SyncClient, args: argparse.Namespace) -> None:
    response = client.cancel_run(args.run_id, reason=args.reason, identity=args.identity)
    if args.json:
        _json(response, runId=args.run_id)
    elif response.already_requested:
        _out(f"cancellation of run {args.run_id} was already requested (seq {response.seq})")
    else:
        _out(f"cancellation of run {args.run_id} requested (seq {response.seq})")


def _signal(client: SyncClient, args: argparse.Namespace) -> None:
    response = client.signal_run(
        args.run_id,
        args.name,
        args.payload,
        request_id=args.request_id,
        identity=args.identity,
    )
    if args.json:
        _json(response, runId=args.run_id, signalName=args.name)
    elif response.duplicate:
        _out(
            f"signal {args.name} to run {args.run_id} was already sent "
            f"with request id {args.request_id} (seq {response.seq})"
        )
    else:
        _out(f"signal {args.name} sent to run {args.run_id} (seq {response.seq})")


def _follow(
    client: SyncClient,
    run_id: str,
    *,
    as_json: bool,
    first: ledger_pb2.RunSnapshot | None = None,
    after_seq: int = 0,
) -> int:
    """Show a run's snapshots until it ends; return the exit status its outcome gives.

    Args:
        client: The connected client.
        run_id: The run to follow.
        as_json: Print every snapshot as proto JSON instead of a view.
        first: A snapshot already in hand (``run start``'s), shown before the stream.
        after_seq: Skip snapshots up to this seq (``first``'s, when given).
    """
    final = first
    view = LineView() if as_json else make_view()
    with view:
        if first is not None and not as_json:
            view.show(first)
        if first is None or not is_terminal(first.status):
            # The handle's watch resumes after a coordinator restart, which a command
            # that may follow a run for hours should survive.
            handle = client.get_handle(run_id)
            with closing(handle.watch(after_seq=after_seq)) as snapshots:
                for final in snapshots:
                    if as_json:
                        _json(final)
                        sys.stdout.flush()
                    else:
                        view.show(final)
        if final is None:
            # The run had ended by ``after_seq``: nothing new to show but its outcome.
            final = client.get_run(run_id)
        if not as_json:
            view.finish(final)
    return outcome_status(final)


def _watch(client: SyncClient, args: argparse.Namespace) -> int:
    return _follow(client, args.run_id, as_json=args.json, after_seq=args.after)


def _result(client: SyncClient, args: argparse.Namespace) -> int:
    handle = client.get_handle(args.run_id)
    try:
        value = handle.result(timeout=args.timeout)
    except ResultTimeoutError:
        return _fail(f"run {args.run_id} did not end within {args.timeout:g}s")
    except RunEndedError as err:
        snap = err.snapshot
        if args.json:
            obj: dict[str, object] = {
                "runId": args.run_id,
                "status": ledger_pb2.RunStatus.Name(snap.status),
            }
            if snap.HasField("error"):
                obj["error"] = {"type": snap.error.type, "message": snap.error.message}
            if snap.compensation != ledger_pb2.COMPENSATION_OUTCOME_UNSPECIFIED:
                obj["compensation"] = ledger_pb2.CompensationOutcome.Name(snap.compensation)
            _out(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        else:
            # Not an error of the command (those exit 2): the run's own outcome, on
            # stderr so that stdout holds only a result.
            sys.stderr.write(f"ledgerflow: run {args.run_id} {outcome_line(snap)}\n")
        return EXIT_RUN_DID_NOT_COMPLETE
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if args.json:
        _out(
            f'{{"runId":{json.dumps(args.run_id)},"status":"RUN_STATUS_COMPLETED","result":{text}}}'
        )
    else:
        _out(text)
    return EXIT_COMPLETED


def _start(client: SyncClient, args: argparse.Namespace) -> int:
    # start_run rather than start: the output shows the whole snapshot StartRun answered.
    started = client.start_run(
        args.workflow,
        args.input,
        run_id=args.run_id,
        idempotency_key=args.idempotency_key,
        tags=args.tags,
        workflow_version=args.workflow_version,
    )
    snap = started.snapshot
    if args.json:
        _json(snap, created=started.created)
    else:
        where = f" in namespace {snap.namespace}" if _namespace(snap.namespace) else ""
        if started.created:
            _out(f"run {started.run_id} created{where}")
        else:
            _out(f"run {started.run_id} already existed{where} ({_status(snap.status)})")
    if not args.watch:
        return 0
    sys.stdout.flush()  # the run id is useful before the run ends
    # The JSON line above already carries the first snapshot; watching starts after it.
    return _follow(client, started.run_id, as_json=args.json, first=snap, after_seq=snap.last_seq)

"""``ledgerflow ledger ...``: offline tools over ledger files."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

from google.protobuf import json_format

from ledgerflow.cli._common import CommandError
from ledgerflow.errors import InvalidEventError
from ledgerflow.ledger import apply_event, empty_snapshot, reference, validate_event
from ledgerflow.v1 import ledger_pb2 as pb


def register(commands: Any) -> None:
    """Add the ``ledger`` command group to the top-level subcommands."""
    ledger = commands.add_parser("ledger", help="offline tools over ledger files")
    sub = ledger.add_subparsers(dest="ledger_command", required=True)
    reduce_cmd = sub.add_parser(
        "reduce",
        help="reduce JSON lines of ledger events to one snapshot per run",
        description=(
            "Read JSON lines of ledger events (any number of runs, in ledger order) and "
            "print one JSON snapshot line per run id, in first-seen order."
        ),
    )
    reduce_cmd.add_argument(
        "file", nargs="?", default="-", help="the events file; '-' or omitted reads stdin"
    )
    reduce_cmd.add_argument(
        "--format",
        choices=("proto", "reference"),
        default="proto",
        help=(
            "proto: proto JSON of LedgerEvent in, RunSnapshot out; reference: the reference "
            "ledger's JSON shapes (type 'run.created', camelCase, epoch milliseconds)"
        ),
    )
    reduce_cmd.set_defaults(handler=_reduce)


def _reject_constant(name: str) -> None:
    # json accepts NaN and Infinity by default; they are not JSON.
    raise ValueError(f"{name} is not valid JSON")


def _proto_event(obj: object) -> pb.LedgerEvent:
    if not isinstance(obj, dict):
        raise InvalidEventError("", "each line must be a JSON object")
    event = pb.LedgerEvent()
    try:
        json_format.ParseDict(obj, event)
    except json_format.ParseError as err:
        # ParseError messages can span lines (they list the valid fields); keep the first.
        raise InvalidEventError("", str(err).splitlines()[0].strip()) from err
    return event


def _proto_snapshot(snap: pb.RunSnapshot) -> dict[str, Any]:
    return json_format.MessageToDict(snap)


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, 1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CommandError(f"line {number}: not valid UTF-8 ({err.reason})") from err


def _reduce(args: argparse.Namespace) -> int:
    parse: Callable[[object], pb.LedgerEvent]
    render: Callable[[pb.RunSnapshot], dict[str, Any]]
    if args.format == "reference":
        parse, render = reference.event_from_json, reference.snapshot_to_json
    else:
        parse, render = _proto_event, _proto_snapshot

    snapshots: dict[str, pb.RunSnapshot] = {}
    try:
        stream: IO[bytes] = (
            sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        )
    except OSError as err:
        raise CommandError(f"cannot read {args.file}: {err.strerror}") from err
    with stream:
        for number, text in _lines(stream):
            if not text.strip():
                continue
            try:
                obj = json.loads(text, parse_constant=_reject_constant)
            except ValueError as err:
                raise CommandError(f"line {number}: invalid JSON: {err}") from err
            try:
                event = parse(obj)
                validate_event(event)
            except InvalidEventError as err:
                raise CommandError(f"line {number}: {err}") from err
            snap = snapshots.get(event.run_id)
            if snap is None:
                snap = snapshots[event.run_id] = empty_snapshot(event.run_id)
            apply_event(snap, event)

    out = sys.stdout
    for snap in snapshots.values():
        out.write(json.dumps(render(snap), ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
    out.flush()
    return 0

"""The ``ledgerflow`` command: one parser, one subcommand module per topic.

Conventions for every command: bad input exits with status 2 and one line on
stderr saying what was wrong (never a traceback); ``--json`` gives
machine-readable output where a command prints something for people.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ledgerflow.cli import _dev, _ledger, _run, _worker
from ledgerflow.cli._common import EXIT_USAGE, CommandError
from ledgerflow.coordinator import _cli as _coordinator_cli
from ledgerflow.coordinator import _cli_server


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2 (argparse prints usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole ``ledgerflow`` command."""
    parser = _Parser(
        prog="ledgerflow",
        description="Durable execution on Postgres: coordinator, workers and tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _ledger.register(commands)
    _coordinator_cli.register(commands)
    _cli_server.register(commands)
    _run.register(commands)
    _worker.register(commands)
    _dev.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ledgerflow`` command.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except CommandError as err:
        sys.stderr.write(f"ledgerflow: {err}\n")
        return EXIT_USAGE
    return status

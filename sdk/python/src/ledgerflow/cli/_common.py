"""What every ``ledgerflow`` subcommand shares."""

from __future__ import annotations

EXIT_USAGE = 2
"""The exit status for bad input: a usage error, an unreadable file, a malformed line."""


class CommandError(Exception):
    """A command's input was unusable; the message is the one line to print (exit status 2)."""

"""What every ``ledgerflow`` subcommand shares."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

EXIT_USAGE = 2
"""The exit status for bad input: a usage error, an unreadable file, a malformed line."""


class CommandError(Exception):
    """A command's input was unusable; the message is the one line to print (exit status 2)."""


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--token`` and ``--tls-ca``: how a command authenticates to the coordinator."""
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        default=None,
        help=(
            "bearer token for a coordinator that requires one (env LEDGERFLOW_TOKEN, "
            "preferred: a command line is visible to other local users)"
        ),
    )
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=None,
        help="connect over TLS, trusting this CA certificate file (env LEDGERFLOW_TLS_CA)",
    )


def add_namespace_flag(parser: argparse.ArgumentParser, does: str, default: str) -> None:
    """Add ``--namespace``, saying what it ``does`` for the command and its ``default``."""
    parser.add_argument(
        "--namespace",
        metavar="NS",
        default=None,
        help=f"{does} (env LEDGERFLOW_NAMESPACE; default: {default})",
    )


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What the connection flags (or their env variables) ask for.

    Attributes:
        token: The bearer token; None sends none.
        credentials: TLS channel credentials; None for plaintext.
        namespace: The namespace to act in; None names none (the coordinator decides).
    """

    token: str | None
    credentials: grpc.ChannelCredentials | None
    namespace: str | None


def connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    """Return the token, channel credentials and namespace the flags (or env) ask for.

    The namespace is passed on unchecked: the coordinator's INVALID_ARGUMENT names the
    field, and its rules stay in one place.

    Raises:
        CommandError: If the CA file cannot be read.
    """
    import grpc

    token = getattr(args, "token", None) or os.environ.get("LEDGERFLOW_TOKEN") or None
    namespace = getattr(args, "namespace", None) or os.environ.get("LEDGERFLOW_NAMESPACE") or None
    ca_path = getattr(args, "tls_ca", None) or os.environ.get("LEDGERFLOW_TLS_CA") or None
    credentials = None
    if ca_path is not None:
        try:
            with open(ca_path, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        except OSError as err:
            raise CommandError(f"--tls-ca: cannot read {ca_path}: {err.strerror}") from err
    return ConnectionSettings(token, credentials, namespace)

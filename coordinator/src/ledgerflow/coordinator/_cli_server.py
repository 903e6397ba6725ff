"""``ledgerflow server`` and ``ledgerflow admin ...``.

Like ``_cli``, this module is imported on every ``ledgerflow`` invocation, so the
coordinator's dependencies load only inside the handlers.

Configuration: every flag has a ``LEDGERFLOW_*`` environment variable; a flag
given on the command line wins.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ledgerflow.cli._common import CommandError
from ledgerflow.coordinator._cli import add_database_url_flag, database_url

_ENV = {
    "listen": "LEDGERFLOW_LISTEN",
    "http_listen": "LEDGERFLOW_HTTP_LISTEN",
    "max_payload_bytes": "LEDGERFLOW_MAX_PAYLOAD_BYTES",
    "log_max_lines": "LEDGERFLOW_LOG_MAX_LINES",
    "log_max_bytes": "LEDGERFLOW_LOG_MAX_BYTES",
    "page_token_secret": "LEDGERFLOW_PAGE_TOKEN_SECRET",
    "shutdown_grace": "LEDGERFLOW_SHUTDOWN_GRACE",
    "lease_seconds": "LEDGERFLOW_LEASE_SECONDS",
    "heartbeat_seconds": "LEDGERFLOW_HEARTBEAT_SECONDS",
    "auth_tokens": "LEDGERFLOW_AUTH_TOKENS",
    "tls_cert": "LEDGERFLOW_TLS_CERT",
    "tls_key": "LEDGERFLOW_TLS_KEY",
    "tls_client_ca": "LEDGERFLOW_TLS_CLIENT_CA",
}


def register(commands: Any) -> None:
    """Add ``server`` and ``admin`` to the top-level subcommands."""
    server = commands.add_parser(
        "server",
        help="run the coordinator",
        description=(
            "Run the ledgerflow coordinator: the gRPC API, with grpc.health.v1 and server "
            "reflection, and with --http-listen the web dashboard. With no database URL it uses "
            "the embedded SQLite file ./ledgerflow.db. "
            "SIGTERM or SIGINT shuts it down gracefully."
        ),
    )
    server.add_argument(
        "--listen", metavar="HOST:PORT", help=f"default: ${_ENV['listen']}, else 127.0.0.1:7170"
    )
    server.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        help=(
            f"serve the web dashboard here (default: ${_ENV['http_listen']}, else no dashboard); "
            "plain HTTP: keep it on loopback or behind a TLS proxy; see docs/dashboard.md"
        ),
    )
    add_database_url_flag(server)
    server.add_argument(
        "--max-payload-bytes",
        type=int,
        metavar="N",
        help="largest payload accepted (default 2 MiB)",
    )
    server.add_argument(
        "--log-max-lines", type=int, metavar="N", help="log lines stored per run (default 25000)"
    )
    server.add_argument(
        "--log-max-bytes", type=int, metavar="N", help="log bytes stored per run (default 5 MB)"
    )
    server.add_argument(
        "--page-token-secret",
        metavar="SECRET",
        help="HMAC key for page tokens; share it between replicas",
    )
    server.add_argument(
        "--shutdown-grace",
        type=float,
        metavar="SECONDS",
        help="time in-flight calls get on shutdown (default 10)",
    )
    server.add_argument(
        "--lease-seconds",
        type=float,
        metavar="SECONDS",
        help="how long a worker holds a task without a heartbeat (default 10)",
    )
    server.add_argument(
        "--heartbeat-seconds",
        type=float,
        metavar="SECONDS",
        help="how often workers heartbeat (default 2; keep it well under the lease)",
    )
    server.add_argument(
        "--auth-tokens",
        metavar="FILE",
        help=(
            f"require bearer tokens listed (as SHA-256 hashes) in this TOML file, on the API "
            f"and the dashboard (default: ${_ENV['auth_tokens']}, else no authentication); "
            "see docs/security.md"
        ),
    )
    server.add_argument(
        "--tls-cert",
        metavar="PEM",
        help=f"serve TLS with this certificate chain (${_ENV['tls_cert']})",
    )
    server.add_argument(
        "--tls-key", metavar="PEM", help=f"the certificate's private key (${_ENV['tls_key']})"
    )
    server.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help=f"mutual TLS: require client certificates from this CA (${_ENV['tls_client_ca']})",
    )
    server.set_defaults(handler=_server)

    admin = commands.add_parser("admin", help="operator tools")
    sub = admin.add_subparsers(dest="admin_command", required=True)
    verify = sub.add_parser(
        "verify",
        help="re-reduce stored ledgers and report snapshots or journals that differ",
        description=(
            "Snapshots and journals are caches of the ledger. Re-reduce each run's events and "
            "compare. Exit 0 when everything matches, 1 when something differs."
        ),
    )
    verify.add_argument(
        "--run", action="append", metavar="ID", help="check only this run (repeatable)"
    )
    add_database_url_flag(verify)
    verify.set_defaults(handler=_verify)
    token = sub.add_parser(
        "new-token",
        help="generate a bearer token and the token-file entry that admits it",
        description=(
            "Print a fresh random token on the first line (give it to the client or worker; it "
            "is shown only once) and then a [[tokens]] entry holding only its SHA-256, to append "
            "to the --auth-tokens file."
        ),
    )
    token.add_argument("--name", required=True, help="a name for the token, shown in logs")
    token.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=("worker", "client", "admin"),
        help="a scope the token holds (repeatable)",
    )
    token.add_argument(
        "--namespace",
        default="*",
        help='the namespace it is confined to (default "*": every namespace)',
    )
    token.set_defaults(handler=_new_token)


def _setting(args: argparse.Namespace, name: str) -> str | None:
    value = getattr(args, name)
    if value is not None:
        return str(value)
    return os.environ.get(_ENV[name]) or None


def _positive(args: argparse.Namespace, name: str, default: float) -> float:
    raw = _setting(args, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        flag = "--" + name.replace("_", "-")
        raise CommandError(f"{flag} (or ${_ENV[name]}) must be a positive number, got {raw!r}")
    return value


def _read_file(args: argparse.Namespace, name: str) -> bytes | None:
    path = _setting(args, name)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        flag = "--" + name.replace("_", "-")
        raise CommandError(f"{flag}: cannot read {path}: {err.strerror}") from err


def _security(args: argparse.Namespace) -> tuple[Any, Any]:
    from ledgerflow.coordinator._server import TlsConfig
    from ledgerflow.coordinator.api._auth import TokenFileError, TokenTable

    tokens: TokenTable | None = None
    tls: TlsConfig | None = None
    tokens_path = _setting(args, "auth_tokens")
    if tokens_path is not None:
        try:
            tokens = TokenTable.load(tokens_path)
        except TokenFileError as err:
            raise CommandError(str(err)) from err
    cert, key = _read_file(args, "tls_cert"), _read_file(args, "tls_key")
    client_ca = _read_file(args, "tls_client_ca")
    if (cert is None) != (key is None):
        raise CommandError("--tls-cert and --tls-key go together")
    if cert is not None and key is not None:
        tls = TlsConfig(cert_chain=cert, private_key=key, client_ca=client_ca)
    elif client_ca is not None:
        raise CommandError("--tls-client-ca needs --tls-cert and --tls-key")
    return tokens, tls


def _new_token(args: argparse.Namespace) -> int:
    from ledgerflow.coordinator.api._auth import TokenFileError, TokenTable, hash_token, new_token

    token = new_token()
    entry = {
        "name": args.name,
        "sha256": hash_token(token),
        "scopes": sorted(set(args.scope)),
        "namespace": args.namespace,
    }
    try:
        TokenTable.from_entries([entry], source="new-token")
    except TokenFileError as err:
        raise CommandError(str(err)) from err
    scopes = ", ".join(f'"{s}"' for s in entry["scopes"])
    sys.stdout.write(
        f"{token}\n\n[[tokens]]\nname = {_toml_string(args.name)}\n"
        f'sha256 = "{entry["sha256"]}"\nscopes = [{scopes}]\n'
        f"namespace = {_toml_string(args.namespace)}\n"
    )
    return 0


def _toml_string(value: str) -> str:
    import json

    # A JSON string literal is a valid TOML basic string.
    return json.dumps(value)


def _server(args: argparse.Namespace) -> int:
    import asyncio

    from ledgerflow.coordinator._server import DEFAULT_LISTEN, ServerConfig, serve
    from ledgerflow.coordinator.api import Limits
    from ledgerflow.coordinator.api._worker_service import LeaseConfig
    from ledgerflow.ledger import LogRetention

    listen = _setting(args, "listen") or DEFAULT_LISTEN
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--listen must be HOST:PORT, got {listen!r}")
    http_listen = _setting(args, "http_listen")
    if http_listen is not None:
        from ledgerflow.coordinator.web import parse_listen

        try:
            parse_listen(http_listen)
        except ValueError as err:
            raise CommandError(str(err)) from err
    defaults = Limits()
    retention = LogRetention()
    secret = _setting(args, "page_token_secret")
    auth_tokens, tls = _security(args)
    if http_listen is not None:
        _warn_about_dashboard(http_listen, authenticated=auth_tokens is not None)
    config = ServerConfig(
        listen=listen,
        database_url=database_url(args),
        limits=Limits(
            max_payload_bytes=int(_positive(args, "max_payload_bytes", defaults.max_payload_bytes))
        ),
        retention=LogRetention(
            max_lines=int(_positive(args, "log_max_lines", retention.max_lines)),
            max_bytes=int(_positive(args, "log_max_bytes", retention.max_bytes)),
        ),
        shutdown_grace=_positive(args, "shutdown_grace", 10.0),
        leases=LeaseConfig(
            lease_seconds=_positive(args, "lease_seconds", 10.0),
            heartbeat_seconds=_positive(args, "heartbeat_seconds", 2.0),
        ),
        http_listen=http_listen,
        **({"page_token_secret": secret.encode()} if secret else {}),
        auth_tokens=auth_tokens,
        tls=tls,
    )
    try:
        asyncio.run(serve(config))
    except ValueError as err:  # a malformed database URL
        raise CommandError(str(err)) from err
    except OSError as err:
        raise CommandError(f"cannot start the coordinator: {err}") from err
    return 0


def _warn_about_dashboard(listen: str, *, authenticated: bool) -> None:
    import logging

    from ledgerflow.coordinator._server import _is_loopback

    if _is_loopback(listen):
        return
    log = logging.getLogger("ledgerflow.coordinator.web")
    # The dashboard serves plain HTTP only; the gRPC port's TLS does not cover it.
    if authenticated:
        log.warning(
            "the dashboard on %s serves plain HTTP: tokens and session cookies cross the "
            "network in clear; put it behind a TLS-terminating proxy (docs/dashboard.md)",
            listen,
        )
    else:
        log.warning(
            "the dashboard on %s has no authentication: anyone who can reach it can read, "
            "cancel and signal runs (see --auth-tokens in docs/dashboard.md)",
            listen,
        )


def _verify(args: argparse.Namespace) -> int:
    import asyncio

    from ledgerflow.coordinator.store import create_engine, verify

    try:
        engine = create_engine(database_url(args))
    except ValueError as err:
        raise CommandError(str(err)) from err

    async def run() -> tuple[int, list[Any]]:
        try:
            return await verify(engine, args.run)
        finally:
            await engine.dispose()

    try:
        checked, found = asyncio.run(run())
    except OSError as err:
        raise CommandError(f"cannot read the database: {err}") from err
    for mismatch in found:
        sys.stdout.write(f"{mismatch.run_id}: {mismatch.what} {mismatch.detail}\n")
    noun = "run" if checked == 1 else "runs"
    verdict = "no differences" if not found else f"{len(found)} difference(s)"
    sys.stdout.write(f"{checked} {noun} checked, {verdict}\n")
    return 1 if found else 0

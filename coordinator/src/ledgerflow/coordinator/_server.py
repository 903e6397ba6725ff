"""The coordinator process: database, store, fan-out and gRPC server, started and stopped as one."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledgerflow.coordinator.api import DomainErrorInterceptor, Limits, PageTokens, RunService
from ledgerflow.coordinator.api._auth import AuthInterceptor, TokenTable
from ledgerflow.coordinator.api._worker_service import Dispatcher, LeaseConfig, WorkerService
from ledgerflow.coordinator.fanout import Hub, PostgresListener, asyncpg_dsn
from ledgerflow.coordinator.store import Store, Touched, create_engine, upgrade
from ledgerflow.ledger import LogRetention, is_terminal
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import (
    run_service_pb2,
    run_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

if TYPE_CHECKING:
    from ledgerflow.coordinator.web import WebServer

_log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:7170"
"""Where the coordinator listens unless told otherwise."""

DEFAULT_HTTP_LISTEN = "127.0.0.1:7171"
"""Where a coordinator that serves the dashboard by default (``ledgerflow dev``) serves it."""

# A fixed default keeps page tokens valid across restarts and replicas of a
# default deployment; the signature still rejects edited or corrupted tokens.
_DEFAULT_TOKEN_SECRET = b"ledgerflow page tokens v1"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The server's TLS identity, and for mutual TLS the CA client certificates must chain to.

    Attributes:
        cert_chain: PEM certificate chain the server presents.
        private_key: PEM private key of the certificate.
        client_ca: PEM CA certificates; when set, clients must present a certificate
            signed by one of them (mutual TLS).
    """

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Return the grpc server credentials for this configuration."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def _is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a coordinator process is configured with.

    Attributes:
        listen: ``HOST:PORT`` to serve gRPC on (port 0 picks a free one).
        database_url: SQLAlchemy URL; None for the embedded SQLite file ``./ledgerflow.db``.
        limits: Request limits.
        retention: Per-run log retention.
        page_token_secret: HMAC key for ListRuns page tokens; share it between replicas.
        shutdown_grace: Seconds in-flight RPCs get to finish on shutdown.
        leases: Task lease and heartbeat timing.
        http_listen: ``HOST:PORT`` to serve the web dashboard on (port 0 picks a free
            one); None serves no dashboard.
        auth_tokens: The bearer tokens calls must carry, on the gRPC API and the
            dashboard alike; None leaves both open (see docs/security.md).
        tls: Serve gRPC over TLS (mutual TLS with ``client_ca``); None serves plaintext.
    """

    listen: str = DEFAULT_LISTEN
    database_url: str | None = None
    limits: Limits = field(default_factory=Limits)
    retention: LogRetention = field(default_factory=LogRetention)
    page_token_secret: bytes = _DEFAULT_TOKEN_SECRET
    shutdown_grace: float = 10.0
    leases: LeaseConfig = field(default_factory=LeaseConfig)
    http_listen: str | None = None
    auth_tokens: TokenTable | None = None
    tls: TlsConfig | None = None


class Coordinator:
    """A running coordinator: :meth:`start`, then :meth:`stop`."""

    def __init__(self, config: ServerConfig) -> None:
        """Create the coordinator (nothing starts until :meth:`start`)."""
        self.config = config
        self.port = 0
        self.hub = Hub()
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._listener: PostgresListener | None = None
        self.store: Store | None = None
        self.dispatcher: Dispatcher | None = None
        self.run_service: RunService | None = None
        self.web: WebServer | None = None
        """The dashboard's HTTP server, when ``config.http_listen`` asks for one."""

    async def start(self) -> None:
        """Migrate the database, start the writer and fan-out, then serve."""
        engine = create_engine(self.config.database_url)
        await upgrade(engine)
        hub = self.hub

        dispatcher_box: list[Dispatcher] = []

        def publish(touched: Sequence[Touched]) -> None:
            if dispatcher_box:
                dispatcher_box[0].on_commit(touched)
            for t in touched:
                if hub.wants(t.run_id, terminal=is_terminal(t.snapshot.status)):
                    # The writer keeps changing its snapshot objects; subscribers
                    # send later, so each gets a copy of the committed state.
                    snapshot = pb.RunSnapshot()
                    snapshot.CopyFrom(t.snapshot)
                    hub.publish(snapshot)

        self.store = Store(engine, retention=self.config.retention, on_commit=publish)
        self.dispatcher = Dispatcher(self.store, self.config.leases)
        dispatcher_box.append(self.dispatcher)
        self.store.on_task_ready = self.dispatcher.wake
        await self.store.start()
        if engine.dialect.name == "postgresql":
            self._listener = PostgresListener(
                asyncpg_dsn(engine.url.render_as_string(hide_password=False)),
                self.store,
                hub,
                on_other_commit=self.dispatcher.wake,
            )
            await self._listener.start()

        limits = self.config.limits
        # Leave room above the payload limit for the request around it; the servicer
        # refuses oversized payloads itself with a message naming the field.
        max_message = max(limits.max_payload_bytes * 4, 16 * 1024 * 1024)
        # The auth interceptor goes first (outermost): an unauthenticated call is
        # refused before anything parses or handles it.
        interceptors: list[grpc.aio.ServerInterceptor] = [DomainErrorInterceptor()]
        if self.config.auth_tokens is not None:
            interceptors.insert(0, AuthInterceptor(self.config.auth_tokens))
        elif not _is_loopback(self.config.listen):
            _log.warning(
                "listening on %s without authentication: anyone who can reach it can start, "
                "read and cancel runs (see --auth-tokens in docs/security.md)",
                self.config.listen,
            )
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
            ],
        )
        self.run_service = RunService(
            self.store, hub, PageTokens(self.config.page_token_secret), limits
        )
        run_service_pb2_grpc.add_RunServiceServicer_to_server(self.run_service, server)
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
            WorkerService(self.store, self.dispatcher, limits, self.config.leases), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = (
            run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
            worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, server)
        if self.config.tls is None:
            self.port = server.add_insecure_port(self.config.listen)
        else:
            self.port = server.add_secure_port(
                self.config.listen, self.config.tls.server_credentials()
            )
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        if self.config.http_listen is not None:
            # Before gRPC starts serving: a dashboard port that cannot be bound fails
            # startup the way a gRPC port does, before any client is accepted.
            await self._start_web(self.config.http_listen)
        await server.start()
        self._server = server
        self.dispatcher.start()
        for name in ("", *services[:1]):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _start_web(self, listen: str) -> None:
        # Imported here: a coordinator without a dashboard never loads the web stack.
        from ledgerflow.coordinator.web import TokenAuthenticator, WebServer, allow_all, create_app

        assert self.run_service is not None
        tokens = self.config.auth_tokens
        # The dashboard admits exactly the tokens (and scopes) the gRPC API admits.
        authenticator = allow_all if tokens is None else TokenAuthenticator(tokens)
        self.web = WebServer(
            create_app(self.run_service, authenticator=authenticator),
            listen,
            shutdown_grace=self.config.shutdown_grace,
        )
        await self.web.start()

    async def stop(self) -> None:
        """Stop accepting RPCs, end streams cleanly, finish in-flight writes, close the database."""
        for name in ("", run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # Workers are asked to finish or hand back their tasks within the grace period.
        if self.dispatcher is not None:
            self.dispatcher.drain(
                "coordinator shutting down",
                time.time_ns() + int(self.config.shutdown_grace * 1_000_000_000),
            )
        # Streams end first (their handlers return), so the grace period is spent on
        # unary calls still writing, not on watchers that would never finish.
        self.hub.close()
        # Before the store closes: a dashboard request may still be writing through it.
        if self.web is not None:
            await self.web.stop()
            self.web = None
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace)
            self._server = None
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self._listener is not None:
            await self._listener.close()
        if self.store is not None:
            await self.store.close()
            await self.store.engine.dispose()


async def serve(config: ServerConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run a coordinator until SIGTERM or SIGINT, then shut it down gracefully.

    Args:
        config: The configuration.
        ready: Set once the server accepts RPCs.
    """
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how an operator finds out
    # what a stuck coordinator is waiting for.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    coordinator = Coordinator(config)
    await coordinator.start()
    host = config.listen.rsplit(":", 1)[0]
    print(f"ledgerflow coordinator listening on {host}:{coordinator.port}", flush=True)  # noqa: T201
    if coordinator.web is not None:
        print(f"ledgerflow dashboard on {coordinator.web.url}", flush=True)  # noqa: T201
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await coordinator.stop()

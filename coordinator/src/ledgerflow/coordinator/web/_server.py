"""Serving the dashboard: uvicorn in the coordinator's own event loop.

The dashboard runs beside the grpc.aio server in one asyncio loop, so its handlers call
the RunService, the store and the hub directly — no thread hops, no locks. uvicorn
(``uvicorn.Server.serve()`` as a task) is the well-kept ASGI server that makes this
simple; the coordinator owns SIGTERM and SIGINT, so uvicorn's own signal handling is
switched off and the coordinator stops it from :meth:`WebServer.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would replace the coordinator's handlers and re-raise the signal once
        # it stopped; the coordinator calls WebServer.stop() itself instead.
        yield


def parse_listen(listen: str, flag: str = "--http-listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6).

    Args:
        listen: The address.
        flag: Named in the error.

    Returns:
        The host (without brackets) and the port.

    Raises:
        ValueError: The address is not ``HOST:PORT``.
    """
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} must be HOST:PORT, got {listen!r}")
    return host, int(port)


class WebServer:
    """The dashboard's HTTP server: :meth:`start`, then :meth:`stop`.

    Args:
        app: The ASGI application (see :func:`~ledgerflow.coordinator.web.create_app`).
        listen: ``HOST:PORT`` to serve on; port 0 picks a free one.
        shutdown_grace: Seconds open requests get to finish on :meth:`stop`.
    """

    def __init__(self, app: ASGIApp, listen: str, *, shutdown_grace: float = 10.0) -> None:
        self._app = app
        self._host, self._port = parse_listen(listen)
        self._grace = shutdown_grace
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        """The port bound, once started."""

    @property
    def url(self) -> str:
        """The dashboard's base URL, once started."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind the port and start serving.

        Raises:
            OSError: The address cannot be bound.
        """
        # Bound and listening here, before uvicorn starts: a taken port fails start()
        # with OSError, and connections made as soon as start() returns wait in the
        # backlog instead of being refused.
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            # Logging stays the embedding process's business.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(self._grace),
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="ledgerflow-dashboard"
        )

    async def stop(self) -> None:
        """Stop accepting connections and wait (up to the grace period) for open ones.

        End the live streams first (close the hub): uvicorn waits for every open
        response, and a stream only ends when its source does.
        """
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None
        self._task = None

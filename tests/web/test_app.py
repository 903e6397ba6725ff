"""The dashboard app driven at the ASGI level: slow readers, keep-alives, the auth hook, shutdown.

A hand-written ASGI ``send`` can stall like a browser that stopped reading, which real
sockets (with their kernel buffers) cannot do deterministically.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path
from typing import Any

import grpc
import httpx
from starlette.requests import HTTPConnection
from starlette.types import Message

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.web import AuthenticationError, Principal, create_app
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub
from tests.e2e.test_workflows import BIN
from tests.web.conftest import SseReader, append, ev, start


class StalledBrowser:
    """Calls an ASGI app with a GET and records body chunks; ``stall()`` stops reading."""

    def __init__(self, app: Any, path: str, query: str) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._reading = asyncio.Event()
        self._reading.set()
        self._stall_at_event = False
        self._gone = asyncio.Event()
        self._requested = False
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [],
            "server": ("test", 80),
            "client": ("test", 1),
            "root_path": "",
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            body = message["body"]
            await self.chunks.put(body)
            if self._stall_at_event and body.startswith((b"id:", b"event:")):
                self._stall_at_event = False
                self._reading.clear()
            # A full socket buffer: the server's write waits until the browser reads.
            await self._reading.wait()

    def stall_after_next_event(self) -> None:
        self._stall_at_event = True

    def resume(self) -> None:
        self._reading.set()

    async def next_event(self) -> bytes:
        while True:
            # The timeout only stops a hung test.
            chunk = await asyncio.wait_for(self.chunks.get(), 30)
            if chunk.startswith((b"id:", b"event:")):
                return chunk

    async def close(self) -> None:
        self._gone.set()
        await self.task


async def test_a_browser_that_reads_slowly_gets_the_newest_snapshot_not_a_backlog(
    coordinator: Coordinator, api: Any
) -> None:
    assert coordinator.run_service is not None
    await start(api, "r1")
    browser = StalledBrowser(create_app(coordinator.run_service), "/api/stream/run", "run_id=r1")
    try:
        browser.stall_after_next_event()
        first = await browser.next_event()
        assert first.startswith(b"id: 1\nevent: snapshot\n")
        # The server is stuck writing snapshot 1 while twenty commits land.
        for i in range(20):
            await append(api, ev("r1", "log_appended", i + 2, lines=[f"line {i}"]))
        browser.resume()
        second = await browser.next_event()
        assert second.startswith(b"id: 21\nevent: snapshot\n"), second[:40]
        assert b'"total_log_count":"20"' in second
    finally:
        await browser.close()


async def test_an_idle_stream_sends_keepalive_comments(coordinator: Coordinator, api: Any) -> None:
    assert coordinator.run_service is not None
    await start(api, "r1")
    app = create_app(coordinator.run_service, keepalive_seconds=0.01)
    browser = StalledBrowser(app, "/api/stream/run", "run_id=r1")
    try:
        await browser.next_event()
        while (chunk := await asyncio.wait_for(browser.chunks.get(), 30)) != b": keep-alive\n\n":
            raise AssertionError(f"unexpected chunk {chunk!r}")
        # The stream is still live after the comment: the next commit arrives.
        await append(api, ev("r1", "run_started", 2))
        assert (await browser.next_event()).startswith(b"id: 2\n")
    finally:
        await browser.close()


async def test_the_authenticator_guards_every_api_route_and_names_the_actor(
    coordinator: Coordinator, api: Any
) -> None:
    assert coordinator.run_service is not None
    assert coordinator.store is not None
    await start(api, "r1")

    async def token_check(connection: HTTPConnection) -> Principal:
        token = connection.headers.get("authorization", "")
        if token == "Bearer alice":
            return Principal(identity="alice")
        if token:
            raise AuthenticationError("this token may not see runs", status=403)
        raise AuthenticationError("sign in first")

    app = create_app(coordinator.run_service, authenticator=token_check)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        for path in ("/api/runs", "/api/run?run_id=r1", "/api/stream/runs", "/api/logs?run_id=r1"):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert refused.json() == {
                "error": {"code": "UNAUTHENTICATED", "message": "sign in first"}
            }
        forbidden = await client.get("/api/runs", headers={"authorization": "Bearer mallory"})
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "PERMISSION_DENIED"
        # Pages and assets hold no run data and load without credentials.
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/static/run.js")).status_code == 200

        answer = await client.post(
            "/api/cancel",
            json={"run_id": "r1", "reason": "r"},
            headers={"authorization": "Bearer alice"},
        )
        assert answer.status_code == 200
    events, _ = await coordinator.store.get_events("r1", 1, 10)
    assert events[0].cancel_requested.identity == "alice"


async def test_shutdown_ends_open_streams_without_telling_the_browser_to_stop(
    db_url: str,
) -> None:
    coordinator = Coordinator(
        ServerConfig(
            listen="127.0.0.1:0", database_url=db_url, http_listen="127.0.0.1:0", shutdown_grace=5
        )
    )
    await coordinator.start()
    assert coordinator.web is not None
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            await start(RunServiceStub(channel), "r1")
        async with (
            httpx.AsyncClient(base_url=coordinator.web.url, timeout=30) as http,
            http.stream("GET", "/api/stream/run", params={"run_id": "r1"}) as response,
        ):
            stream = SseReader(response)
            first = await stream.next()
            assert first is not None
            assert first.id == "1"
            stopping = asyncio.create_task(coordinator.stop())
            # The run is not over: no "end", so the browser reconnects to the next coordinator.
            assert await stream.next() is None
    finally:
        await (stopping if stopping is not None else coordinator.stop())


def test_the_server_command_checks_http_listen(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'ledgerflow.db'}"

    def server(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), "server", "--listen", "127.0.0.1:0", "--database-url", database, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    malformed = server("--http-listen", "7171")
    assert malformed.returncode == 2
    assert malformed.stderr.strip() == "ledgerflow: --http-listen must be HOST:PORT, got '7171'"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = server("--http-listen", f"127.0.0.1:{port}")
    assert busy.returncode == 2
    assert busy.stderr.startswith("ledgerflow: cannot start the coordinator: ")
    assert "Address already in use" in busy.stderr

"""The dashboard with a token file: bearer headers, sign-in sessions, scopes, the caller.

A real coordinator with ``auth_tokens`` serves the dashboard on a real HTTP port (the
wiring ``ledgerflow server --auth-tokens`` uses); runs are created through the gRPC
API with an admin token. Streams are read over real HTTP: an in-process ASGI client
would buffer a never-ending response. Session expiry and the session limit use the
app in process with a fake clock, so nothing waits for time to pass.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from starlette.routing import Route

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.api import PageTokens, RunService
from ledgerflow.coordinator.api._auth import Principal as ApiPrincipal
from ledgerflow.coordinator.api._auth import (
    TokenTable,
    current_principal,
    hash_token,
    new_token,
)
from ledgerflow.coordinator.web import TokenAuthenticator, WebServer, create_app
from ledgerflow.coordinator.web._tokens import COOKIE_NAME, RPC_BY_PATH
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub
from tests.e2e.test_workflows import BIN, free_port
from tests.web.conftest import SseReader


@dataclass(frozen=True)
class Tokens:
    """One token per scope, in clear, and the table that admits them."""

    worker: str
    client: str
    admin: str
    table: TokenTable

    def all(self) -> list[str]:
        return [self.worker, self.client, self.admin]

    def toml(self) -> str:
        entries = [("ci-worker", self.worker, "worker"), ("app", self.client, "client")]
        entries.append(("ops", self.admin, "admin"))
        return "".join(
            f'[[tokens]]\nname = "{name}"\nsha256 = "{hash_token(tok)}"\nscopes = ["{scope}"]\n\n'
            for name, tok, scope in entries
        )


@pytest.fixture
def tokens() -> Tokens:
    worker, client, admin = new_token(), new_token(), new_token()
    table = TokenTable.from_entries(
        [
            {"name": "ci-worker", "sha256": hash_token(worker), "scopes": ["worker"]},
            {"name": "app", "sha256": hash_token(client), "scopes": ["client"]},
            {"name": "ops", "sha256": hash_token(admin), "scopes": ["admin"]},
        ]
    )
    return Tokens(worker=worker, client=client, admin=admin, table=table)


@pytest.fixture
async def secured(tokens: Tokens, tmp_path: Path) -> AsyncIterator[Coordinator]:
    """A coordinator that requires ``tokens`` on gRPC and on its dashboard."""
    c = Coordinator(
        ServerConfig(
            listen="127.0.0.1:0",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledgerflow.db'}",
            http_listen="127.0.0.1:0",
            auth_tokens=tokens.table,
            shutdown_grace=2,
        )
    )
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def http(secured: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with a cookie jar, like a browser. The timeout only stops a hung test."""
    assert secured.web is not None
    async with httpx.AsyncClient(base_url=secured.web.url, timeout=30) as client:
        yield client


StartRun = Callable[[str], Awaitable[None]]


@pytest.fixture
async def start_run(secured: Coordinator, tokens: Tokens) -> AsyncIterator[StartRun]:
    """Start a run through the gRPC API, as the admin token."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        stub = RunServiceStub(channel)

        async def start(run_id: str) -> None:
            await stub.StartRun(
                rpb.StartRunRequest(workflow_name="wf", run_id=run_id),
                metadata=(("authorization", f"Bearer {tokens.admin}"),),
            )

        yield start


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def set_cookie(response: httpx.Response) -> SimpleCookie:
    cookies: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookies.load(header)
    return cookies


async def sign_in(http: httpx.AsyncClient, token: str, **headers: str) -> httpx.Response:
    return await http.post("/api/session", json={"token": token}, headers=headers)


# -- refusals ----------------------------------------------------------------------------


async def test_without_credentials_every_api_route_is_401_and_nothing_happens(
    http: httpx.AsyncClient, start_run: StartRun, secured: Coordinator
) -> None:
    await start_run("r1")
    for path in (
        "/api/runs",
        "/api/run?run_id=r1",
        "/api/events?run_id=r1",
        "/api/logs?run_id=r1",
        "/api/stream/runs",
        "/api/stream/run?run_id=r1",
        "/api/stream/logs?run_id=r1",
        "/api/session",
    ):
        refused = await http.get(path)
        assert refused.status_code == 401, path
        assert error_of(refused)["code"] == "UNAUTHENTICATED"
        assert "sign in" in error_of(refused)["message"]
    cancel = await http.post("/api/cancel", json={"run_id": "r1"})
    signal_ = await http.post("/api/signal", json={"run_id": "r1", "signal_name": "s"})
    assert (cancel.status_code, signal_.status_code) == (401, 401)
    assert secured.store is not None
    events, _ = await secured.store.get_events("r1", 0, 10)
    assert [e.WhichOneof("payload") for e in events] == ["run_created"]
    # The shell holds no run data: pages and assets load, and show the sign-in form.
    assert (await http.get("/")).status_code == 200
    assert (await http.get("/static/common.js")).status_code == 200


async def test_unknown_and_malformed_credentials_are_401(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    for headers in (
        bearer("lf_not-a-real-token"),
        {"authorization": f"Basic {tokens.client}"},
        {"authorization": "Bearer"},
        {"authorization": f"Basic {tokens.client}", "cookie": f"{COOKIE_NAME}=forged"},
        {"cookie": f"{COOKIE_NAME}=forged-session-id"},
        # A bearer header is the credential when present: a bad one is not rescued by
        # anything else the request carries.
        {**bearer("lf_wrong"), "cookie": f"{COOKIE_NAME}=whatever"},
    ):
        response = await http.get("/api/runs", headers=headers)
        assert response.status_code == 401, headers
        assert error_of(response)["code"] == "UNAUTHENTICATED"
    wrong = await sign_in(http, "lf_not-a-real-token")
    assert wrong.status_code == 401
    assert error_of(wrong) == {"code": "UNAUTHENTICATED", "message": "unknown token"}
    assert "set-cookie" not in wrong.headers
    empty = await sign_in(http, "  ")
    assert (empty.status_code, error_of(empty)["field"]) == (400, "token")
    form = await http.post("/api/session", data={"token": tokens.client})
    assert form.status_code == 415
    assert "set-cookie" not in form.headers
    # Anyone may post a sign-in, so its body is read only up to a bound.
    huge = await sign_in(http, "x" * (1 << 20))
    assert (huge.status_code, error_of(huge)["code"]) == (413, "RESOURCE_EXHAUSTED")


async def test_a_session_cookie_works_behind_a_proxy_that_sends_basic_authorization(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    await sign_in(http, tokens.client)
    # The browser repeats the proxy's Basic credentials on every request.
    behind = await http.get("/api/runs", headers={"authorization": "Basic dXNlcjpwdw=="})
    assert behind.status_code == 200


async def test_a_worker_only_token_is_403_as_on_the_api(
    http: httpx.AsyncClient, tokens: Tokens, start_run: StartRun
) -> None:
    await start_run("r1")
    for path in ("/api/runs", "/api/run?run_id=r1", "/api/stream/runs"):
        denied = await http.get(path, headers=bearer(tokens.worker))
        assert denied.status_code == 403, path
        error = error_of(denied)
        assert error["code"] == "PERMISSION_DENIED"
        # Names the token and the scope, like the API's refusal; never the token.
        assert "'ci-worker'" in error["message"]
        assert "'client'" in error["message"]
    listed = await http.get("/api/runs", headers=bearer(tokens.worker))
    assert "/api/runs (RunService.ListRuns)" in error_of(listed)["message"]
    cancel = await http.post("/api/cancel", json={"run_id": "r1"}, headers=bearer(tokens.worker))
    assert cancel.status_code == 403
    # No session for a token that could read nothing.
    refused = await sign_in(http, tokens.worker)
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "PERMISSION_DENIED"
    assert "set-cookie" not in refused.headers


# -- bearer headers ----------------------------------------------------------------------


async def test_a_bearer_token_with_the_client_scope_reads_and_streams(
    http: httpx.AsyncClient, tokens: Tokens, start_run: StartRun
) -> None:
    await start_run("r1")
    for token in (tokens.client, tokens.admin):  # admin holds every scope
        listed = await http.get("/api/runs", headers=bearer(token))
        assert listed.status_code == 200
        assert [r["run_id"] for r in listed.json()["runs"]] == ["r1"]
    who = await http.get("/api/session", headers=bearer(tokens.client))
    assert who.json() == {"identity": "app", "credential": "bearer", "scopes": ["client"]}
    async with http.stream(
        "GET", "/api/stream/run", params={"run_id": "r1"}, headers=bearer(tokens.client)
    ) as response:
        assert response.status_code == 200
        first = await SseReader(response).next()
        assert first is not None
        assert (first.event, first.json()["run_id"]) == ("snapshot", "r1")


# -- sign-in sessions ----------------------------------------------------------------------


async def test_sign_in_sets_a_session_cookie_that_reads_and_streams(
    http: httpx.AsyncClient, tokens: Tokens, start_run: StartRun
) -> None:
    signed_in = await sign_in(http, tokens.client)
    assert signed_in.status_code == 200
    assert signed_in.json() == {"identity": "app", "scopes": ["client"]}
    assert signed_in.headers["cache-control"] == "no-store"
    cookie = set_cookie(signed_in)[COOKIE_NAME]
    assert cookie.value != tokens.client
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/api"
    assert int(cookie["max-age"]) > 0
    assert not cookie["secure"]  # plain HTTP here; Secure when the request came over HTTPS

    who = await http.get("/api/session")
    assert who.json() == {"identity": "app", "credential": "cookie", "scopes": ["client"]}
    await start_run("r1")
    assert [r["run_id"] for r in (await http.get("/api/runs")).json()["runs"]] == ["r1"]

    # EventSource sends cookies but no headers: the streams take the cookie.
    async with http.stream("GET", "/api/stream/runs") as response:
        assert response.status_code == 200
        stream = SseReader(response)
        await start_run("r2")
        got = await stream.next()
        assert got is not None
        assert (got.event, got.json()["run_id"]) == ("run", "r2")
    async with http.stream("GET", "/api/stream/logs", params={"run_id": "r1"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")


async def test_behind_a_tls_proxy_on_loopback_the_cookie_is_secure(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    # uvicorn believes X-Forwarded-Proto from a loopback peer: a TLS-terminating proxy.
    signed_in = await sign_in(http, tokens.client, **{"x-forwarded-proto": "https"})
    assert set_cookie(signed_in)[COOKIE_NAME]["secure"] is True
    out = await http.delete("/api/session", headers={"x-forwarded-proto": "https"})
    assert set_cookie(out)[COOKIE_NAME]["secure"] is True


async def test_sign_out_ends_the_session_and_clears_the_cookie(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    await sign_in(http, tokens.client)
    session_id = http.cookies[COOKIE_NAME]
    assert (await http.get("/api/runs")).status_code == 200

    out = await http.delete("/api/session")
    assert out.status_code == 204
    cleared = set_cookie(out)[COOKIE_NAME]
    assert (cleared.value, cleared["max-age"], cleared["path"]) == ("", "0", "/api")
    assert COOKIE_NAME not in http.cookies
    assert (await http.get("/api/runs")).status_code == 401
    # The session is over on the server too: a copy of the cookie is worthless.
    replayed = await http.get("/api/runs", headers={"cookie": f"{COOKIE_NAME}={session_id}"})
    assert replayed.status_code == 401
    assert "session has ended" in error_of(replayed)["message"]
    # Signing out again, or without a session, is harmless.
    assert (await http.delete("/api/session")).status_code == 204


async def test_signing_in_again_ends_the_previous_session(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    await sign_in(http, tokens.client)
    first = http.cookies[COOKIE_NAME]
    again = await sign_in(http, tokens.admin)
    assert again.json()["identity"] == "ops"
    assert http.cookies[COOKIE_NAME] != first
    stale = await http.get("/api/runs", headers={"cookie": f"{COOKIE_NAME}={first}"})
    assert stale.status_code == 401


# -- actions -------------------------------------------------------------------------------


async def test_cancel_and_signal_record_the_tokens_name_as_identity(
    http: httpx.AsyncClient, tokens: Tokens, start_run: StartRun, secured: Coordinator
) -> None:
    await start_run("r1")
    await sign_in(http, tokens.client)
    cancelled = await http.post("/api/cancel", json={"run_id": "r1", "reason": "enough"})
    assert cancelled.status_code == 200
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as other:
        signalled = await other.post(
            "/api/signal",
            json={"run_id": "r1", "signal_name": "approve"},
            headers=bearer(tokens.admin),
        )
    assert signalled.status_code == 200
    assert secured.store is not None
    events, _ = await secured.store.get_events("r1", 0, 10)
    assert events[1].cancel_requested.identity == "app"
    assert events[2].signal_received.identity == "ops"


async def test_cookie_authenticated_changes_must_come_from_the_dashboards_own_pages(
    http: httpx.AsyncClient, tokens: Tokens, start_run: StartRun, secured: Coordinator
) -> None:
    await start_run("r1")
    for site in ("cross-site", "same-site"):
        login = await sign_in(http, tokens.client, **{"sec-fetch-site": site})
        assert login.status_code == 403, site
        assert "set-cookie" not in login.headers
    await sign_in(http, tokens.client, **{"sec-fetch-site": "same-origin"})
    for site in ("cross-site", "same-site"):
        forged = await http.post(
            "/api/cancel", json={"run_id": "r1"}, headers={"sec-fetch-site": site}
        )
        assert forged.status_code == 403, site
        assert error_of(forged)["code"] == "PERMISSION_DENIED"
        # Reading is not a change: a link from elsewhere may open the full log.
        opened = await http.get(
            "/api/logs", params={"run_id": "r1"}, headers={"sec-fetch-site": site}
        )
        assert opened.status_code == 200
    assert secured.store is not None
    snapshot = await secured.store.get_run("r1")
    assert not snapshot.cancel_requested
    own = await http.post(
        "/api/cancel", json={"run_id": "r1"}, headers={"sec-fetch-site": "same-origin"}
    )
    assert own.status_code == 200


# -- secrecy -------------------------------------------------------------------------------


async def test_no_token_appears_in_logs_or_responses(
    http: httpx.AsyncClient,
    tokens: Tokens,
    start_run: StartRun,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await start_run("r1")
    responses: list[httpx.Response] = []
    for token in [*tokens.all(), "lf_unknown-token-value"]:
        responses.append(await sign_in(http, token))
        responses.append(await sign_in(http, token, **{"sec-fetch-site": "cross-site"}))
        for path in ("/api/runs", "/api/session", "/api/run?run_id=r1", "/api/stream/runs?x=1"):
            if path.startswith("/api/stream"):
                async with http.stream("GET", path, headers=bearer(token)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        responses.append(response)
                continue
            responses.append(await http.get(path, headers=bearer(token)))
            responses.append(await http.get(path))  # with whatever cookie sign-in left
        responses.append(
            await http.post("/api/cancel", json={"run_id": "r1"}, headers=bearer(token))
        )
        responses.append(await http.delete("/api/session"))
    assert {r.status_code for r in responses} >= {200, 204, 401, 403}
    assert "signed in to the dashboard" in caplog.text
    assert "refused" in caplog.text
    for token in [*tokens.all(), "lf_unknown-token-value"]:
        assert token not in caplog.text
        for response in responses:
            assert token not in response.text, response.request.url
            assert token not in str(response.headers.raw), response.request.url


# -- the caller the RunService sees --------------------------------------------------------


class RecordingRunService(RunService):
    """The RunService, noting the ``current_principal`` its handlers run with."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[tuple[str, ApiPrincipal | None]] = []

    async def ListRuns(  # noqa: N802
        self, request: rpb.ListRunsRequest, context: Any
    ) -> rpb.ListRunsResponse:
        self.seen.append(("ListRuns", current_principal.get()))
        return await super().ListRuns(request, context)

    async def CancelRun(  # noqa: N802
        self, request: rpb.CancelRunRequest, context: Any
    ) -> rpb.CancelRunResponse:
        self.seen.append(("CancelRun", current_principal.get()))
        return await super().CancelRun(request, context)

    async def WatchRuns(  # noqa: N802
        self, request: rpb.WatchRunsRequest, context: Any
    ) -> AsyncIterator[rpb.WatchRunsResponse]:
        # A generator's body runs in whichever task pulls it: for a stream, not the
        # request's own task.
        self.seen.append(("WatchRuns", current_principal.get()))
        async for item in super().WatchRuns(request, context):
            self.seen.append(("WatchRuns item", current_principal.get()))
            yield item


@pytest.fixture
def recording(secured: Coordinator) -> RecordingRunService:
    assert secured.store is not None
    return RecordingRunService(secured.store, secured.hub, PageTokens(b"k"), secured.config.limits)


async def test_the_runservice_handlers_see_the_tokens_principal(
    recording: RecordingRunService, tokens: Tokens, start_run: StartRun
) -> None:
    await start_run("r1")
    web = WebServer(
        create_app(recording, authenticator=TokenAuthenticator(tokens.table)), "127.0.0.1:0"
    )
    await web.start()
    try:
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            await sign_in(http, tokens.client)
            assert (await http.get("/api/runs")).status_code == 200
            async with http.stream("GET", "/api/stream/runs") as response:
                stream = SseReader(response)
                await start_run("r2")
                assert await stream.next() is not None
            cancel = await http.post(
                "/api/cancel", json={"run_id": "r1"}, headers=bearer(tokens.admin)
            )
            assert cancel.status_code == 200
    finally:
        await web.stop()
    names = {(kind, p.name if p is not None else None) for kind, p in recording.seen}
    assert names == {
        ("ListRuns", "app"),
        ("WatchRuns", "app"),
        ("WatchRuns item", "app"),
        ("CancelRun", "ops"),
    }
    assert ("ListRuns", tokens.table.lookup(tokens.client)) in recording.seen


async def test_an_open_dashboard_leaves_the_caller_unset(
    recording: RecordingRunService,
) -> None:
    transport = httpx.ASGITransport(app=create_app(recording))
    async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as http:
        assert (await http.get("/api/runs")).status_code == 200
        who = await http.get("/api/session")
        assert who.json() == {"identity": "dashboard", "credential": ""}
        # Nothing to sign in to.
        assert (await http.post("/api/session", json={"token": "x"})).status_code == 405
    assert recording.seen == [("ListRuns", None)]


# -- sessions in memory --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_sessions_end_after_their_lifetime(
    recording: RecordingRunService, tokens: Tokens
) -> None:
    clock = FakeClock()
    auth = TokenAuthenticator(tokens.table, session_seconds=60, clock=clock)
    transport = httpx.ASGITransport(app=create_app(recording, authenticator=auth))
    async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as http:
        signed_in = await sign_in(http, tokens.client)
        assert set_cookie(signed_in)[COOKIE_NAME]["max-age"] == "60"
        clock.now += 59
        assert (await http.get("/api/runs")).status_code == 200
        clock.now += 1
        ended = await http.get("/api/runs")
        assert ended.status_code == 401
        assert "session has ended" in error_of(ended)["message"]


async def test_the_oldest_session_ends_when_the_limit_is_reached(
    recording: RecordingRunService, tokens: Tokens
) -> None:
    auth = TokenAuthenticator(tokens.table, max_sessions=2)
    transport = httpx.ASGITransport(app=create_app(recording, authenticator=auth))
    browsers = [
        httpx.AsyncClient(transport=transport, base_url="http://dash.test") for _ in range(3)
    ]
    try:
        for browser in browsers:
            assert (await sign_in(browser, tokens.client)).status_code == 200
        statuses = [(await b.get("/api/runs")).status_code for b in browsers]
        assert statuses == [401, 200, 200]
    finally:
        for browser in browsers:
            await browser.aclose()


def test_every_api_route_names_the_rpc_whose_scope_it_needs(
    recording: RecordingRunService, tokens: Tokens
) -> None:
    app = create_app(recording, authenticator=TokenAuthenticator(tokens.table))
    paths = {r.path for r in app.routes if isinstance(r, Route) and r.path.startswith("/api/")}
    assert paths - {"/api/session"} == set(RPC_BY_PATH)
    assert all(hasattr(RunService, rpc) for rpc in RPC_BY_PATH.values())


# -- ledgerflow server ---------------------------------------------------------------------


@pytest.fixture
def cli_server(tmp_path: Path, tokens: Tokens) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``ledgerflow server --auth-tokens FILE --http-listen`` on every interface."""
    token_file = tmp_path / "tokens.toml"
    token_file.write_text(tokens.toml())
    http_port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN),
            "server",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path / 'ledgerflow.db'}",
            "--auth-tokens",
            str(token_file),
            "--http-listen",
            f"0.0.0.0:{http_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        assert "dashboard on" in proc.stdout.readline()
        yield f"http://127.0.0.1:{http_port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_the_server_command_gives_the_dashboard_its_token_file(
    cli_server: tuple[str, subprocess.Popen[str]], tokens: Tokens
) -> None:
    url, proc = cli_server
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/runs").status_code == 401
        assert http.get("/api/runs", headers=bearer(tokens.worker)).status_code == 403
        assert http.get("/api/runs", headers=bearer(tokens.client)).status_code == 200
        assert http.post("/api/session", json={"token": tokens.client}).status_code == 200
        assert http.get("/api/runs").status_code == 200
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    # Served beyond loopback over plain HTTP: the operator is told to add TLS.
    assert "serves plain HTTP" in stderr
    assert all(token not in stderr for token in tokens.all())

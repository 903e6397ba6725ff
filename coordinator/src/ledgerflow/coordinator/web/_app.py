"""The dashboard application: pages, JSON endpoints and live streams over the RunService.

Every data endpoint calls the :class:`~ledgerflow.coordinator.api.RunService` handlers
themselves — the same validation, limits, store calls and domain errors as the gRPC API
— so the dashboard can neither accept what the API refuses nor word an error
differently. (A loopback gRPC client would add a hop and a second connection per
browser stream for no gain: the handlers are plain coroutines and async generators.)
The live streams are the WatchRun, WatchRuns and TailLogs generators, so they share
the hub's coalescing: a browser that reads slowly gets the newest snapshot, never a
backlog.

Endpoints (run ids travel as a query parameter or in the body, never in the path, so
any id — slashes, ``?``, ``%`` and all — round-trips unchanged):

========================================  ===============================================
``GET /``                                  the runs page
``GET /run?run_id=ID``                     the run page
``GET /api/runs``                          ListRuns: ``status`` (repeatable or comma
                                           separated), ``workflow``, ``created_after``,
                                           ``created_before`` (ISO 8601 with a time
                                           zone), ``page_size``, ``page_token``
``GET /api/run?run_id=``                   GetRun
``GET /api/events?run_id=``                GetEvents: ``after_seq``, ``page_size``
``GET /api/logs?run_id=``                  the stored log as plain text (TailLogs)
``POST /api/cancel``                       CancelRun: ``{"run_id", "reason"}``
``POST /api/signal``                       SignalRun: ``{"run_id", "signal_name",
                                           "payload" (any JSON) or "payload_text" (JSON
                                           text, checked as the API checks payload bytes),
                                           "request_id"}``
``GET /api/stream/run?run_id=``            SSE ``snapshot`` events (WatchRun), id = the
                                           snapshot's ``last_seq``; resumes after
                                           ``Last-Event-ID`` (or ``after_seq``)
``GET /api/stream/logs?run_id=``           SSE ``logs`` events (TailLogs, follow), id =
                                           the last line's seq; resumes after
                                           ``Last-Event-ID`` (or from ``from_seq``)
``GET /api/stream/runs``                   SSE ``run`` events (WatchRuns) for the
                                           ``/api/runs`` filters; no id: a list has no
                                           single position, so a page reloads its rows
                                           whenever its stream (re)connects
``GET /api/session``                       who is asking: ``{"identity", "credential",
                                           "scopes"}``
``POST /api/session``                      sign in with ``{"token"}`` (sets the session
                                           cookie); only with a :class:`TokenAuthenticator`
``DELETE /api/session``                    sign out (clears it); likewise
========================================  ===============================================

The run and log streams send ``end`` when they are over (the run reached a terminal
status) so the browser stops instead of reconnecting, and ``error`` (then stop) if
the API refuses mid-stream.

POST bodies must be ``application/json``: a cross-site page can then only send them
after a CORS preflight this server never grants, so even without authentication
another site cannot cancel or signal runs through a visitor's browser (see
:mod:`._tokens` for the session cookie's further defences).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledgerflow.coordinator.api import RunService
from ledgerflow.coordinator.web._auth import (
    SESSION_PATH,
    AuthenticationError,
    Authenticator,
    AuthMiddleware,
    allow_all,
    auth_error_response,
    principal_of,
)
from ledgerflow.coordinator.web._http import (
    JSONResponse,
    UnsupportedMediaError,
    domain_error_body,
    dumps,
    error_response,
    json_body,
    message_response,
    str_field,
    to_json,
)
from ledgerflow.coordinator.web._sse import SseEvent, aclose, sse_response
from ledgerflow.coordinator.web._tokens import TokenAuthenticator
from ledgerflow.errors import InvalidArgumentError, LedgerflowError
from ledgerflow.ledger import JSON_ENCODING, check_id, is_terminal, json_payload
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb

STATIC_DIR = Path(__file__).with_name("static")
"""The pages, scripts and styles, shipped as package data."""

# The RunService handlers never read their context: they raise domain errors rather
# than abort, and the interceptor maps those for gRPC as this module does for HTTP.
_NO_CONTEXT = cast("grpc.aio.ServicerContext[Any, Any]", None)

# Defence in depth behind building every element with textContent: even an injected
# element could not run inline script or load anything from elsewhere.
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

_STATUS_BY_WORD = {
    name.removeprefix("RUN_STATUS_").lower(): value
    for name, value in pb.RunStatus.items()
    if value != pb.RUN_STATUS_UNSPECIFIED
}


class _SecurityHeaders:
    """Adds :data:`_SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self._app(scope, receive, send_with_headers)


# -- request parsing ------------------------------------------------------------------


def _int_param(params: Mapping[str, str], name: str, default: int = 0) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgumentError(name, f"must be an integer, got {raw!r}") from None


def _non_negative(params: Mapping[str, str], name: str, default: int) -> int:
    # Checked here, not left to the stream: once a stream has started, its status is 200.
    value = _int_param(params, name, default)
    if value < 0:
        raise InvalidArgumentError(name, "must not be negative")
    return value


def _time_param(params: QueryParams, name: str) -> Timestamp | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidArgumentError(
            name, f"must be an ISO 8601 time such as 2025-01-31T12:00:00Z, got {raw!r}"
        ) from None
    if when.tzinfo is None:
        raise InvalidArgumentError(name, f"must include a time zone (Z or +hh:mm), got {raw!r}")
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def run_filter(params: QueryParams) -> rpb.RunFilter:
    """Build a RunFilter from ``status``, ``workflow``, ``created_after``, ``created_before``.

    Args:
        params: The query parameters.

    Returns:
        The filter, to be checked further by the RunService.

    Raises:
        InvalidArgumentError: A parameter is malformed (the parameter is named).
    """
    flt = rpb.RunFilter(workflow_name=params.get("workflow", ""))
    for raw in params.getlist("status"):
        for word in filter(None, (w.strip() for w in raw.split(","))):
            key = word.lower().removeprefix("run_status_")
            if key not in _STATUS_BY_WORD:
                known = ", ".join(_STATUS_BY_WORD)
                raise InvalidArgumentError(
                    "status", f"unknown run status {word!r} (one of {known})"
                )
            flt.statuses.append(_STATUS_BY_WORD[key])
    for name in ("created_after", "created_before"):
        stamp = _time_param(params, name)
        if stamp is not None:
            getattr(flt, name).CopyFrom(stamp)
    return flt


def _signal_payload(body: Mapping[str, Any]) -> common_pb2.Payload | None:
    if "payload" in body and "payload_text" in body:
        raise InvalidArgumentError("payload", "give payload or payload_text, not both")
    if "payload_text" in body:
        text = str_field(body, "payload_text")
        if not text.strip():
            return None
        # Raw text on purpose: the RunService checks it exactly as it checks the bytes
        # of a gRPC payload, and its error ("payload: is not valid JSON ...") is shown.
        return common_pb2.Payload(encoding=JSON_ENCODING, data=text.encode("utf-8"))
    if "payload" in body:
        try:
            return json_payload(body["payload"])
        except (TypeError, ValueError) as err:
            raise InvalidArgumentError("payload", f"cannot be encoded as JSON ({err})") from None
    return None


# -- the endpoints ----------------------------------------------------------------------


class _Endpoints:
    """The handlers, bound to one RunService."""

    def __init__(self, service: RunService, keepalive: float) -> None:
        self._service = service
        self._keepalive = keepalive

    async def runs_page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "runs.html")

    async def run_page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "run.html")

    async def session(self, request: Request) -> Response:
        principal = principal_of(request)
        body: dict[str, Any] = {"identity": principal.identity, "credential": principal.credential}
        if principal.caller is not None:
            body["scopes"] = sorted(principal.caller.scopes)
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def list_runs(self, request: Request) -> Response:
        params = request.query_params
        response = await self._service.ListRuns(
            rpb.ListRunsRequest(
                filter=run_filter(params),
                page_size=_int_param(params, "page_size"),
                page_token=params.get("page_token", ""),
            ),
            _NO_CONTEXT,
        )
        return message_response(response)

    async def get_run(self, request: Request) -> Response:
        response = await self._service.GetRun(
            rpb.GetRunRequest(run_id=request.query_params.get("run_id", "")), _NO_CONTEXT
        )
        return message_response(response)

    async def get_events(self, request: Request) -> Response:
        params = request.query_params
        response = await self._service.GetEvents(
            rpb.GetEventsRequest(
                run_id=params.get("run_id", ""),
                after_seq=_int_param(params, "after_seq"),
                page_size=_int_param(params, "page_size"),
            ),
            _NO_CONTEXT,
        )
        return message_response(response)

    async def get_logs(self, request: Request) -> Response:
        run_id = request.query_params.get("run_id", "")
        pages = self._service.TailLogs(
            rpb.TailLogsRequest(run_id=run_id, from_seq=1, follow=False), _NO_CONTEXT
        )
        # The first page is read before answering, so an unknown run is a 404, not
        # an empty 200.
        first = await anext(pages, None)

        async def body() -> AsyncIterator[bytes]:
            page = first
            try:
                while page is not None:
                    yield "".join(
                        f"{line.seq}\t{line.channel}\t{line.text}\n" for line in page.lines
                    ).encode()
                    page = await anext(pages, None)
            finally:
                await aclose(pages)

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

    async def cancel(self, request: Request) -> Response:
        body = await json_body(request)
        response = await self._service.CancelRun(
            rpb.CancelRunRequest(
                run_id=str_field(body, "run_id"),
                reason=str_field(body, "reason"),
                identity=principal_of(request).identity,
            ),
            _NO_CONTEXT,
        )
        return message_response(response)

    async def signal(self, request: Request) -> Response:
        body = await json_body(request)
        signal = rpb.SignalRunRequest(
            run_id=str_field(body, "run_id"),
            signal_name=str_field(body, "signal_name"),
            request_id=str_field(body, "request_id"),
            identity=principal_of(request).identity,
        )
        payload = _signal_payload(body)
        if payload is not None:
            signal.payload.CopyFrom(payload)
        return message_response(await self._service.SignalRun(signal, _NO_CONTEXT))

    # -- streams --------------------------------------------------------------------

    def _is_over(self, run_id: str) -> Callable[[], Awaitable[bool]]:
        async def is_over() -> bool:
            try:
                response = await self._service.GetRun(rpb.GetRunRequest(run_id=run_id), _NO_CONTEXT)
            except Exception:
                return False
            return is_terminal(response.run.status)

        return is_over

    @staticmethod
    def _resume_after(request: Request, param: str) -> int | None:
        """Return the position in ``Last-Event-ID`` (it wins: the browser's own cursor)."""
        raw = request.headers.get("last-event-id")
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise InvalidArgumentError(
                "Last-Event-ID", f"must be a {param} (a non-negative integer), got {raw!r}"
            )
        return value

    async def stream_run(self, request: Request) -> Response:
        params = request.query_params
        run_id = params.get("run_id", "")
        after = self._resume_after(request, "seq")
        if after is None:
            after = _non_negative(params, "after_seq", 0)
        # Checked before the stream starts so that a bad id or unknown run is an HTTP
        # error, not a stream that never opens.
        await self._service.GetRun(rpb.GetRunRequest(run_id=run_id), _NO_CONTEXT)
        source = self._service.WatchRun(
            rpb.WatchRunRequest(run_id=run_id, after_seq=after), _NO_CONTEXT
        )

        def frame(item: rpb.WatchRunResponse) -> SseEvent:
            return SseEvent("snapshot", dumps(to_json(item.snapshot)), str(item.snapshot.last_seq))

        return sse_response(_events(source, frame, is_over=self._is_over(run_id)), self._keepalive)

    async def stream_logs(self, request: Request) -> Response:
        params = request.query_params
        run_id = params.get("run_id", "")
        after = self._resume_after(request, "log line seq")
        from_seq = after + 1 if after is not None else _non_negative(params, "from_seq", 1)
        await self._service.GetRun(rpb.GetRunRequest(run_id=run_id), _NO_CONTEXT)
        source = self._service.TailLogs(
            rpb.TailLogsRequest(run_id=run_id, from_seq=from_seq, follow=True), _NO_CONTEXT
        )

        def frame(item: rpb.TailLogsResponse) -> SseEvent:
            return SseEvent(
                "logs", dumps(to_json(item)["lines"]), str(item.lines[-1].seq) if item.lines else ""
            )

        return sse_response(_events(source, frame, is_over=self._is_over(run_id)), self._keepalive)

    async def stream_runs(self, request: Request) -> Response:
        flt = run_filter(request.query_params)
        # The RunService checks this too, but only once the stream has started (200).
        if flt.workflow_name:
            check_id(flt.workflow_name, "filter.workflow_name")
        source = self._service.WatchRuns(rpb.WatchRunsRequest(filter=flt), _NO_CONTEXT)

        def frame(item: rpb.WatchRunsResponse) -> SseEvent:
            return SseEvent("run", dumps(to_json(item.run)))

        return sse_response(_events(source, frame), self._keepalive)


_T = TypeVar("_T")


async def _events(
    source: AsyncIterator[_T],
    frame: Callable[[_T], SseEvent],
    *,
    is_over: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[SseEvent]:
    """Frame a RunService stream; report its end, or an error it raised mid-stream.

    A source also ends when the coordinator shuts down, so ``end`` (which tells the
    browser to stop for good) is sent only when ``is_over`` confirms the run is over;
    otherwise the response just ends and the browser reconnects and resumes.
    """
    try:
        async for item in source:
            yield frame(item)
    except LedgerflowError as err:
        _, body = domain_error_body(err)
        yield SseEvent("error", dumps(body))
        return
    finally:
        await aclose(source)
    if is_over is not None and await is_over():
        yield SseEvent("end", "{}")


# -- errors --------------------------------------------------------------------------


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    status, body = domain_error_body(cast(LedgerflowError, exc))
    return JSONResponse(body, status_code=status)


async def _on_unsupported_media(request: Request, exc: Exception) -> Response:
    return error_response(415, "INVALID_ARGUMENT", str(exc), "content-type")


async def _on_authentication_error(request: Request, exc: Exception) -> Response:
    return auth_error_response(cast(AuthenticationError, exc))


# -- the application -------------------------------------------------------------------


def create_app(
    service: RunService,
    *,
    authenticator: Authenticator = allow_all,
    keepalive_seconds: float = 15.0,
) -> Starlette:
    """Build the dashboard's ASGI application.

    Args:
        service: The coordinator's RunService; every endpoint goes through it.
        authenticator: Decides who may see and change runs (see :mod:`._auth`); the
            default lets everyone in. A :class:`TokenAuthenticator` also gets its
            sign-in and sign-out endpoints (``POST`` and ``DELETE /api/session``).
        keepalive_seconds: Silence after which a stream sends a keep-alive comment.

    Returns:
        The application.
    """
    endpoints = _Endpoints(service, keepalive_seconds)
    routes = [
        Route("/", endpoints.runs_page, methods=["GET"]),
        Route("/run", endpoints.run_page, methods=["GET"]),
        Route("/api/runs", endpoints.list_runs, methods=["GET"]),
        Route("/api/run", endpoints.get_run, methods=["GET"]),
        Route("/api/events", endpoints.get_events, methods=["GET"]),
        Route("/api/logs", endpoints.get_logs, methods=["GET"]),
        Route("/api/cancel", endpoints.cancel, methods=["POST"]),
        Route("/api/signal", endpoints.signal, methods=["POST"]),
        Route("/api/stream/run", endpoints.stream_run, methods=["GET"]),
        Route("/api/stream/logs", endpoints.stream_logs, methods=["GET"]),
        Route("/api/stream/runs", endpoints.stream_runs, methods=["GET"]),
        Route(SESSION_PATH, endpoints.session, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if isinstance(authenticator, TokenAuthenticator):
        routes += [
            Route(SESSION_PATH, authenticator.sign_in, methods=["POST"]),
            Route(SESSION_PATH, authenticator.sign_out, methods=["DELETE"]),
        ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(AuthMiddleware, authenticator=authenticator),
        ],
        exception_handlers={
            LedgerflowError: _on_domain_error,
            UnsupportedMediaError: _on_unsupported_media,
            AuthenticationError: _on_authentication_error,
        },
    )

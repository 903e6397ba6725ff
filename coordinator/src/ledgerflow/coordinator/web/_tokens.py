"""Token authentication for the dashboard: the coordinator's token file, in a browser too.

With ``ledgerflow server --auth-tokens FILE`` the dashboard admits exactly the tokens
the gRPC API admits (:class:`TokenAuthenticator`), presented one of two ways:

* ``Authorization: Bearer <token>`` on any ``/api/`` request (scripts, ``curl``);
* a session cookie, for browsers, whose ``EventSource`` cannot send headers: the page
  posts the token once to ``POST /api/session``, whose answer sets the cookie, and
  ``DELETE /api/session`` signs out.

Scopes: every ``/api/`` route is a RunService call (:data:`RPC_BY_PATH`) and needs what
that RPC needs over gRPC (:func:`~ledgerflow.coordinator.api._auth.required_scope`,
``client`` today), so a ``worker``-only token gets 403 here as it gets
PERMISSION_DENIED there. Unknown or missing credentials are 401.

The cookie holds a random session id, not the token. The rejected alternative, the
token itself in the cookie, needs no server state (it survives a restart and works
across replicas), but it turns every cookie into a long-lived API credential, sends
the token back in a ``Set-Cookie`` header, and signing out could not revoke it. A
session id is worthless against the gRPC API, ends at sign-out or after
:data:`SESSION_SECONDS`, and nothing derived from the token is ever sent back. The
price: sessions live in the memory of the coordinator that signed the browser in, so
a restart signs everyone out, and several coordinators behind one dashboard address
need sticky routing (or bearer headers).

The cookie is ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict`` (another
site's page cannot make the browser send it), limited to ``/api``, and ``Secure`` when
the request arrived over HTTPS. The dashboard itself serves plain HTTP: over a network
it belongs behind a TLS-terminating proxy (uvicorn trusts the proxy's
``X-Forwarded-Proto`` from loopback, which makes the cookie ``Secure``); otherwise it
belongs on loopback, since tokens and cookies would cross the network in clear.

Cross-site request forgery: requests that change anything are POST or DELETE with JSON
bodies, which another site can send only after a CORS preflight this server never
grants, and the cookie is ``SameSite=Strict``. As a third layer, a cookie-authenticated
request other than GET is refused unless the browser's ``Sec-Fetch-Site`` header says
``same-origin`` (when it sends one): SameSite treats a sibling subdomain as the same
site, Sec-Fetch-Site does not. ``Origin`` would do the same job, but comparing it needs
the public host name, which a proxy in front may rewrite in ``Host``.

Neither a token nor a session id is ever logged or put in a response body; logs name
the token's ``name``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from ledgerflow.coordinator.api._auth import Principal as ApiPrincipal
from ledgerflow.coordinator.api._auth import TokenTable, hash_token, required_scope
from ledgerflow.coordinator.web._auth import SESSION_PATH, AuthenticationError, Principal
from ledgerflow.coordinator.web._http import JSONResponse, json_body, str_field
from ledgerflow.errors import InvalidArgumentError

_log = logging.getLogger(__name__)

COOKIE_NAME = "ledgerflow_session"
"""The session cookie."""

COOKIE_PATH = "/api"
"""The browser sends the cookie only with API requests, never with pages or assets."""

SESSION_SECONDS = 12 * 60 * 60
"""How long a sign-in lasts."""

MAX_SESSIONS = 10_000
"""Sessions kept at most; signing in beyond this ends the oldest session."""

_RUN_SERVICE = "/ledgerflow.v1.RunService/"

# Sign-in is the one POST anyone may send: far more than any token, far less than memory.
_MAX_SIGN_IN_BYTES = 16 * 1024

RPC_BY_PATH: Mapping[str, str] = {
    "/api/runs": "ListRuns",
    "/api/run": "GetRun",
    "/api/events": "GetEvents",
    "/api/logs": "TailLogs",
    "/api/cancel": "CancelRun",
    "/api/signal": "SignalRun",
    "/api/stream/run": "WatchRun",
    "/api/stream/logs": "TailLogs",
    "/api/stream/runs": "WatchRuns",
}
"""The RunService RPC each ``/api/`` route calls; a route needs that RPC's scope.

A path missing here (a route added without an entry, or an unknown path about to be a
404) counts as a RunService call too, so no route is ever more open than the API.
``GET /api/session`` (who is signed in) only needs a valid credential.
"""


@dataclass(frozen=True, slots=True)
class _Session:
    caller: ApiPrincipal
    expires: float


class _Sessions:
    """Signed-in browsers, kept by the SHA-256 of their session ids, oldest first.

    Looking up the hash (as the token table does) means a timing difference can reveal
    at most a prefix of a hash, never of a live session id.
    """

    def __init__(self, lifetime: float, limit: int, clock: Callable[[], float]) -> None:
        self._lifetime = lifetime
        self._limit = limit
        self._clock = clock
        self._by_hash: dict[str, _Session] = {}

    def open(self, caller: ApiPrincipal) -> str:
        now = self._clock()
        # Every session lives equally long, so insertion order is expiry order: drop the
        # expired from the front, and the oldest when full.
        while self._by_hash:
            oldest = next(iter(self._by_hash))
            if self._by_hash[oldest].expires > now and len(self._by_hash) < self._limit:
                break
            del self._by_hash[oldest]
        session_id = secrets.token_urlsafe(32)
        self._by_hash[hash_token(session_id)] = _Session(caller, now + self._lifetime)
        return session_id

    def get(self, session_id: str) -> ApiPrincipal | None:
        key = hash_token(session_id)
        session = self._by_hash.get(key)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._by_hash[key]
            return None
        return session.caller

    def close(self, session_id: str) -> ApiPrincipal | None:
        session = self._by_hash.pop(hash_token(session_id), None)
        return None if session is None else session.caller


def _check_same_origin(connection: HTTPConnection) -> None:
    """Refuse a cookie-authenticated change another origin's page made the browser send."""
    if connection.scope.get("method", "GET") in ("GET", "HEAD"):
        return
    site = connection.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise AuthenticationError(
            "refused a request from another origin: a sign-in session acts only for this "
            "dashboard's own pages",
            status=403,
        )


def _bearer(header: str | None) -> str | None:
    """Return the token of a ``Bearer`` header; None for no header or another scheme.

    Another scheme is not an error: a proxy in front may use Basic authentication, and
    the browser then sends that header along with the session cookie.
    """
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenAuthenticator:
    """Admits the coordinator's tokens: a bearer header, or a session cookie from sign-in.

    Pass it to :func:`~ledgerflow.coordinator.web.create_app` as ``authenticator``; the
    app then also serves its :meth:`sign_in` and :meth:`sign_out` endpoints.

    Args:
        tokens: The coordinator's token table (the same one the gRPC API checks).
        session_seconds: How long a sign-in lasts.
        max_sessions: Sessions kept at most (the oldest ends first).
        clock: Monotonic seconds; tests pass a fake one to end sessions without waiting.
    """

    def __init__(
        self,
        tokens: TokenTable,
        *,
        session_seconds: float = SESSION_SECONDS,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._session_seconds = session_seconds
        self._sessions = _Sessions(session_seconds, max_sessions, clock)

    async def __call__(self, connection: HTTPConnection) -> Principal:
        """Return who is asking.

        A bearer header, when present, is the credential and the cookie is ignored.

        Args:
            connection: The request.

        Returns:
            The token's principal, as ``caller`` and by ``name`` as ``identity``.

        Raises:
            AuthenticationError: 401 without a valid token or live session; 403 when the
                token lacks the route's scope, or a cookie came with a cross-site change.
        """
        path = connection.scope["path"]
        token = _bearer(connection.headers.get("authorization"))
        if token is not None:
            caller = self._tokens.lookup(token)
            if caller is None:
                _log.info("dashboard refused %s: unknown token", path)
                raise AuthenticationError("unknown token")
            credential = "bearer"
        else:
            session_id = connection.cookies.get(COOKIE_NAME)
            if not session_id:
                raise AuthenticationError(
                    "sign in with a token, or send 'Authorization: Bearer <token>'"
                )
            caller = self._sessions.get(session_id)
            if caller is None:
                _log.info("dashboard refused %s: unknown or expired session", path)
                raise AuthenticationError("the session has ended: sign in again")
            _check_same_origin(connection)
            credential = "cookie"
        if path != SESSION_PATH:
            rpc = RPC_BY_PATH.get(path, "")
            _check_scope(caller, rpc, f"{path} (RunService.{rpc})" if rpc else path)
        return Principal(identity=caller.name, caller=caller, credential=credential)

    async def sign_in(self, request: Request) -> Response:
        """``POST /api/session`` with ``{"token"}``: check it, start a session, set the cookie.

        Args:
            request: The request.

        Returns:
            ``{"identity", "scopes"}`` with the session cookie; the token is not echoed.

        Raises:
            AuthenticationError: 401 for an unknown token, 403 for one without the
                scope the dashboard needs or for a cross-site request.
            InvalidArgumentError: No token in the body.
            PayloadTooLargeError: The body is far longer than any token.
        """
        _check_same_origin(request)
        body = await json_body(request, max_bytes=_MAX_SIGN_IN_BYTES)
        token = str_field(body, "token").strip()
        if not token:
            raise InvalidArgumentError("token", "must be a non-empty string")
        caller = self._tokens.lookup(token)
        if caller is None:
            _log.info("dashboard sign-in refused: unknown token")
            raise AuthenticationError("unknown token")
        # Any RunService call: a session that can read nothing would be no use.
        _check_scope(caller, "", "the dashboard")
        stale = request.cookies.get(COOKIE_NAME)
        if stale:
            self._sessions.close(stale)
        session_id = self._sessions.open(caller)
        _log.info("token %r signed in to the dashboard", caller.name)
        response = JSONResponse(
            {"identity": caller.name, "scopes": sorted(caller.scopes)},
            headers={"cache-control": "no-store"},
        )
        response.set_cookie(
            COOKIE_NAME,
            session_id,
            max_age=int(self._session_seconds),
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        """``DELETE /api/session``: end the session and clear the cookie (204).

        It needs no valid credential (a stale cookie must still be clearable), and a
        forged sign-out harms nobody, so it skips the same-origin check.
        """
        session_id = request.cookies.get(COOKIE_NAME)
        caller = self._sessions.close(session_id) if session_id else None
        if caller is not None:
            _log.info("token %r signed out of the dashboard", caller.name)
        response = Response(status_code=204, headers={"cache-control": "no-store"})
        response.delete_cookie(
            COOKIE_NAME,
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response


def _check_scope(caller: ApiPrincipal, rpc: str, what: str) -> None:
    """Raise 403 unless ``caller`` may call the RunService ``rpc`` (``""``: any of them)."""
    scope = required_scope(_RUN_SERVICE + rpc)
    if scope and not caller.allows(scope):
        _log.info("token %r lacks scope %r for %s", caller.name, scope, what)
        raise AuthenticationError(
            f"token {caller.name!r} lacks the {scope!r} scope that {what} needs", status=403
        )

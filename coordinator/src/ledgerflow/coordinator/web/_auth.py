"""The one place the dashboard decides who is asking: the authentication hook.

An :class:`Authenticator` sees the request (headers, cookies, query) and returns a
:class:`Principal` or raises :class:`AuthenticationError`. :class:`AuthMiddleware` runs
it once for every ``/api/`` request, JSON and streams alike, and handlers read the
result with :func:`principal_of`. Pages and static files stay public: they are a shell
that holds no run data. The default, :func:`allow_all`, lets every request in as the
``dashboard`` identity; a coordinator with a token file uses
:class:`~ledgerflow.coordinator.web.TokenAuthenticator` instead.

While an ``/api/`` request is handled, the API's
:data:`~ledgerflow.coordinator.api._auth.current_principal` holds the principal's
:attr:`Principal.caller`, exactly as the gRPC interceptor sets it for an RPC: the
RunService handlers the dashboard calls apply their per-caller checks (namespaces)
to dashboard requests without knowing where a call came from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from ledgerflow.coordinator.api._auth import Principal as ApiPrincipal
from ledgerflow.coordinator.api._auth import current_principal
from ledgerflow.coordinator.web._http import JSONResponse, error_response

API_PREFIX = "/api/"
"""Requests under this path carry run data and pass through the authenticator."""

SESSION_PATH = "/api/session"
"""``GET``: who is signed in; ``POST``: sign in; ``DELETE``: sign out."""

# Signing in needs no credentials yet, and signing out must work with a stale cookie.
_UNAUTHENTICATED_ROUTES = frozenset({("POST", SESSION_PATH), ("DELETE", SESSION_PATH)})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a dashboard request.

    Attributes:
        identity: Recorded as the ``identity`` of the cancellations and signals the
            request makes, so the ledger says who pressed the button.
        caller: The API principal (the token's) the RunService handlers see as
            ``current_principal`` while they serve the request; None for an open
            dashboard, as for an open gRPC API.
        credential: How the request proved who it is — ``"bearer"`` (an
            ``Authorization`` header), ``"cookie"`` (a signed-in session) — or ``""``
            when nothing was asked for.
    """

    identity: str
    caller: ApiPrincipal | None = None
    credential: str = ""


class AuthenticationError(Exception):
    """The request may not see or change run data.

    Attributes:
        status: 401 when no valid credentials came with the request, 403 when they
            came but do not allow this request.
        code: The gRPC status name reported with it, as the API would.
    """

    def __init__(self, message: str, *, status: int = 401) -> None:
        """Create the error.

        Args:
            message: Shown to the user as is.
            status: 401 (unauthenticated) or 403 (permission denied).
        """
        super().__init__(message)
        self.status = status
        self.code = "UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED"


Authenticator = Callable[[HTTPConnection], Awaitable[Principal]]
"""Returns who is asking, or raises :class:`AuthenticationError`."""


async def allow_all(connection: HTTPConnection) -> Principal:
    """Let everyone in as ``dashboard`` (the default: a coordinator without a token file).

    Args:
        connection: The request.

    Returns:
        The ``dashboard`` principal.
    """
    return Principal(identity="dashboard")


def principal_of(connection: HTTPConnection) -> Principal:
    """Return the principal :class:`AuthMiddleware` attached to an ``/api/`` request."""
    principal = connection.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        # Only reachable if a route outside /api/ asks: a wiring bug, not a user error.
        raise RuntimeError(f"no principal on {connection.url.path}: not an {API_PREFIX} route")
    return principal


class AuthMiddleware:
    """Runs the authenticator for every ``/api/`` request; refuses with a JSON error."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        """Wrap ``app``.

        Args:
            app: The application.
            authenticator: Decides who is asking.
        """
        self._app = app
        self._authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate ``/api/`` requests, then pass every request on."""
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(API_PREFIX)
            or (scope["method"], scope["path"]) in _UNAUTHENTICATED_ROUTES
        ):
            await self._app(scope, receive, send)
            return
        try:
            principal = await self._authenticator(HTTPConnection(scope))
        except AuthenticationError as err:
            await auth_error_response(err)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        # Set in this request's own task: the response's tasks (a stream's body, its
        # reads from a RunService generator) start from a copy of this context, and
        # other requests never see it.
        reset = current_principal.set(principal.caller)
        try:
            await self._app(scope, receive, send)
        finally:
            current_principal.reset(reset)


def auth_error_response(err: AuthenticationError) -> JSONResponse:
    """Return the 401 or 403 JSON error for ``err``."""
    return error_response(err.status, err.code, str(err))

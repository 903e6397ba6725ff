"""The one place the dashboard decides who is asking: the authentication hook.

Authentication does not exist yet (tokens and namespaces come with the auth work), so
the default :func:`allow_all` lets every request in as the ``dashboard`` identity. The
hook is shaped for what comes next: an :class:`Authenticator` sees the request (headers,
cookies, query — ``EventSource`` cannot send headers, so a token for the live streams
will travel as a cookie) and returns a :class:`Principal` or raises
:class:`AuthenticationError`. :class:`AuthMiddleware` runs it once for every ``/api/``
request, JSON and streams alike, and handlers read the result with :func:`principal_of`.
Pages and static files stay public: they are a shell that holds no run data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from ledgerflow.coordinator.web._http import error_response

API_PREFIX = "/api/"
"""Requests under this path carry run data and pass through the authenticator."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a dashboard request.

    Attributes:
        identity: Recorded as the ``identity`` of the cancellations and signals the
            request makes, so the ledger says who pressed the button.
    """

    identity: str


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
    """Let everyone in as ``dashboard`` (the default until authentication exists).

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
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            try:
                principal = await self._authenticator(HTTPConnection(scope))
            except AuthenticationError as err:
                response = error_response(err.status, err.code, str(err))
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        await self._app(scope, receive, send)

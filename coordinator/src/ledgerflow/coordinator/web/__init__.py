"""The live web dashboard, served by the coordinator on its own HTTP port.

Pages (static HTML, vanilla ES-module JavaScript and CSS shipped in the package: no
Node build) read JSON endpoints and Server-Sent Event streams that go through the
coordinator's RunService. :class:`WebServer` serves an app from :func:`create_app` in
the coordinator's event loop; ``ledgerflow server --http-listen HOST:PORT`` turns it
on. Authentication plugs in at one place: the ``authenticator`` of :func:`create_app`
(see :class:`Authenticator`). A coordinator with a token file passes a
:class:`TokenAuthenticator`, which admits the same tokens as the gRPC API, as a bearer
header or through a sign-in session cookie.
"""

from ledgerflow.coordinator.web._app import STATIC_DIR, create_app, run_filter
from ledgerflow.coordinator.web._auth import (
    AuthenticationError,
    Authenticator,
    Principal,
    allow_all,
)
from ledgerflow.coordinator.web._server import WebServer, parse_listen
from ledgerflow.coordinator.web._tokens import TokenAuthenticator

__all__ = [
    "STATIC_DIR",
    "AuthenticationError",
    "Authenticator",
    "Principal",
    "TokenAuthenticator",
    "WebServer",
    "allow_all",
    "create_app",
    "parse_listen",
    "run_filter",
]

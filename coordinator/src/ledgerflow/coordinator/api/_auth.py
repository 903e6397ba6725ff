"""Bearer-token authentication: who is calling, and may they call this method.

The coordinator is open unless it is given a token file (``ledgerflow server
--auth-tokens FILE``). With one, every call must carry ``authorization: Bearer
<token>`` metadata naming a token in the file, and the token must hold the scope
the method needs (:func:`required_scope`). The file stores SHA-256 hashes of the
tokens, never the tokens themselves, so it holds no secret in clear::

    [[tokens]]
    name = "billing-worker"          # shown in logs and error messages
    sha256 = "9f86d081884c7d65..."   # hex SHA-256 of the token (ledgerflow admin new-token)
    scopes = ["worker"]              # any of: worker, client, admin
    namespace = "billing"            # optional; "*" (the default) for every namespace

A token is looked up by its hash: the hash is what the dictionary compares, so a
timing difference reveals at most a prefix of a hash, never of a token. Error
messages and logs name the token's ``name``; the token itself is never echoed or
logged (tests/security scans captured logs for it).

A token with a namespace is confined to it (:func:`confined_namespace`): it starts
runs there, lists and watches only that namespace's runs, finds no run of another
(NOT_FOUND, as if it did not exist), and as a worker is given only that namespace's
tasks. Asking for another namespace by name is PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

from ledgerflow.errors import InvalidArgumentError, PermissionDeniedError

_log = logging.getLogger(__name__)

SCOPES = frozenset({"worker", "client", "admin"})
"""The scopes a token can hold. ``admin`` satisfies every check."""

ALL_NAMESPACES = "*"
"""The namespace of a token that may act in every namespace."""

_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")

# Health checks stay open so load balancers and orchestrators can probe an
# authenticated coordinator without holding a token.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_SCOPE_BY_PREFIX = (
    ("/ledgerflow.v1.WorkerService/", "worker"),
    ("/ledgerflow.v1.RunService/", "client"),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token belongs to.

    Attributes:
        name: The token's name from the token file (never the token).
        scopes: The scopes it holds.
        namespace: The namespace it acts in, or ``"*"`` for every namespace.
    """

    name: str
    scopes: frozenset[str]
    namespace: str = ALL_NAMESPACES

    def allows(self, scope: str) -> bool:
        """Return whether the principal holds ``scope`` (``admin`` holds every scope)."""
        return scope in self.scopes or "admin" in self.scopes


current_principal: ContextVar[Principal | None] = ContextVar("ledgerflow_principal", default=None)
"""The caller of the RPC being handled; None when the coordinator runs without auth."""


def check_namespace(value: str, field: str) -> None:
    """Refuse a namespace name that is not lowercase letters, digits, "_" and "-".

    Raises:
        InvalidArgumentError: Naming ``field``.
    """
    if not _NAMESPACE_RE.fullmatch(value):
        raise InvalidArgumentError(
            field,
            'must be lowercase letters, digits, "_" and "-" (at most 63), starting with '
            "a letter or digit",
        )


def confined_namespace() -> str | None:
    """Return the namespace the current caller is confined to; None when it may see all."""
    principal = current_principal.get()
    if principal is None or principal.namespace == ALL_NAMESPACES:
        return None
    return principal.namespace


def namespace_for(requested: str, field: str) -> str | None:
    """Return the namespace a request acts in: the one named, or the caller's own.

    Args:
        requested: The namespace the request names, empty for none.
        field: The request field it came from, named in errors.

    Returns:
        The namespace, or None for "every namespace" (nothing named, and the caller
        is not confined to one).

    Raises:
        InvalidArgumentError: The name is malformed.
        PermissionDeniedError: The caller is confined to another namespace.
    """
    if requested:
        check_namespace(requested, field)
    confined = confined_namespace()
    if confined is None:
        return requested or None
    if requested and requested != confined:
        principal = current_principal.get()
        name = principal.name if principal is not None else "?"
        raise PermissionDeniedError(
            f"{field}: token {name!r} may act only in namespace {confined!r}, not {requested!r}"
        )
    return confined


class TokenFileError(ValueError):
    """The token file is missing, unreadable or malformed (the message names the entry)."""


def hash_token(token: str) -> str:
    """Return the hex SHA-256 of ``token``, as the token file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """Return a fresh random token (256 bits, URL-safe, prefixed ``lf_`` to spot leaks)."""
    return "lf_" + secrets.token_urlsafe(32)


def required_scope(method: str) -> str | None:
    """Return the scope a full method name needs; ``""`` for any valid token, None for none.

    WorkerService needs ``worker``, RunService needs ``client``, health checks are open
    and anything else (server reflection, unknown methods) needs a valid token.
    """
    if method.startswith(_OPEN_PREFIXES):
        return None
    for prefix, scope in _SCOPE_BY_PREFIX:
        if method.startswith(prefix):
            return scope
    return ""


class TokenTable:
    """Tokens (by hash) and the principals they stand for."""

    def __init__(self, by_hash: Mapping[str, Principal]) -> None:
        """Create a table from hex SHA-256 hashes to principals."""
        self._by_hash = dict(by_hash)

    def __len__(self) -> int:
        """The number of tokens."""
        return len(self._by_hash)

    def lookup(self, token: str) -> Principal | None:
        """Return the token's principal, or None for an unknown token."""
        return self._by_hash.get(hash_token(token))

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Read a TOML token file (format in this module's docstring).

        Raises:
            TokenFileError: If the file cannot be read or an entry is malformed.
        """
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as err:
            raise TokenFileError(f"cannot read token file {path}: {err.strerror}") from err
        except tomllib.TOMLDecodeError as err:
            raise TokenFileError(f"token file {path} is not valid TOML: {err}") from err
        entries = data.get("tokens")
        if not isinstance(entries, list) or not entries:
            raise TokenFileError(f"token file {path} has no [[tokens]] entries")
        return cls.from_entries(entries, source=str(path))

    @classmethod
    def from_entries(cls, entries: Iterable[Any], *, source: str = "tokens") -> TokenTable:
        """Build a table from parsed ``[[tokens]]`` entries (dicts).

        Raises:
            TokenFileError: If an entry is malformed or a hash or name repeats.
        """
        by_hash: dict[str, Principal] = {}
        names: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"{source}: tokens[{i}]"
            if not isinstance(entry, dict):
                raise TokenFileError(f"{where} must be a table")
            unknown = set(entry) - {"name", "sha256", "scopes", "namespace"}
            if unknown:
                raise TokenFileError(f"{where} has unknown keys {sorted(unknown)}")
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise TokenFileError(f"{where}.name must be a non-empty string")
            digest = entry.get("sha256")
            if not isinstance(digest, str) or not _HEX64_RE.fullmatch(digest.lower()):
                raise TokenFileError(
                    f"{where}.sha256 must be 64 hex digits (the SHA-256 of the token, "
                    "not the token itself)"
                )
            scopes = entry.get("scopes")
            if (
                not isinstance(scopes, list)
                or not scopes
                or not all(isinstance(s, str) and s in SCOPES for s in scopes)
            ):
                raise TokenFileError(f"{where}.scopes must be a non-empty list of {sorted(SCOPES)}")
            namespace = entry.get("namespace", ALL_NAMESPACES)
            if not isinstance(namespace, str) or not (
                namespace == ALL_NAMESPACES or _NAMESPACE_RE.fullmatch(namespace)
            ):
                raise TokenFileError(
                    f'{where}.namespace must be "*" or lowercase letters, digits, "_" and '
                    '"-" (at most 63)'
                )
            if digest.lower() in by_hash:
                raise TokenFileError(f"{where} repeats the hash of another token")
            if name in names:
                raise TokenFileError(f"{where}.name {name!r} is used twice")
            names.add(name)
            by_hash[digest.lower()] = Principal(name, frozenset(scopes), namespace)
        return cls(by_hash)


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def _rejecting(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: Any) -> Any:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises; this makes an async generator

    return _rebuilt(handler, abort, abort_stream)


def _rebuilt(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary: Callable[[Any, Any], Awaitable[Any]],
    stream: Callable[[Any, Any], AsyncIterator[Any]],
) -> grpc.RpcMethodHandler[Any, Any]:
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    f: Any
    if handler.unary_unary is not None:
        f = unary
        return grpc.unary_unary_rpc_method_handler(f, **kwargs)
    if handler.unary_stream is not None:
        f = stream
        return grpc.unary_stream_rpc_method_handler(f, **kwargs)
    if handler.stream_unary is not None:
        f = unary
        return grpc.stream_unary_rpc_method_handler(f, **kwargs)
    f = stream
    return grpc.stream_stream_rpc_method_handler(f, **kwargs)


def _with_principal(
    handler: grpc.RpcMethodHandler[Any, Any], principal: Principal
) -> grpc.RpcMethodHandler[Any, Any]:
    # The principal is set inside the handler's own coroutine, so the servicer (and
    # anything it awaits) sees it whatever task grpc runs the interceptor in.
    inner: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )

    async def unary(request: Any, context: Any) -> Any:
        current_principal.set(principal)
        return await inner(request, context)

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        current_principal.set(principal)
        async for item in cast(AsyncIterator[Any], inner(request, context)):
            yield item

    return _rebuilt(handler, unary, stream)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's bearer token and scope before its handler runs.

    UNAUTHENTICATED for a missing, malformed or unknown token; PERMISSION_DENIED
    for a token without the method's scope. Neither message contains the token.
    """

    def __init__(self, tokens: TokenTable) -> None:
        """Check calls against ``tokens``."""
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Let the call through with its principal set, or answer it with an error."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        scope = required_scope(method)
        if scope is None:
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        if token is None:
            return _rejecting(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token: send 'authorization: Bearer <token>' metadata",
            )
        principal = self._tokens.lookup(token)
        if principal is None:
            _log.info("rejected a call to %s: unknown token", method)
            return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if scope and not principal.allows(scope):
            _log.info("token %r lacks scope %r for %s", principal.name, scope, method)
            return _rejecting(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {principal.name!r} lacks the {scope!r} scope that {method} needs",
            )
        return _with_principal(handler, principal)

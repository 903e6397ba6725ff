"""How clients and workers present themselves: bearer-token metadata and TLS credentials."""

from __future__ import annotations

import grpc

from ledgerflow.errors import InvalidArgumentError

Metadata = tuple[tuple[str, str], ...]


def bearer_metadata(token: str | None) -> Metadata | None:
    """Return the call metadata that carries ``token``; None without a token.

    Raises:
        InvalidArgumentError: If the token is blank or holds whitespace or control characters
            (it would be sent mangled or not at all). The message never includes it.
    """
    if token is None:
        return None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise InvalidArgumentError("token", "must be non-empty printable text without whitespace")
    return (("authorization", f"Bearer {token}"),)


def channel_credentials(
    credentials: grpc.ChannelCredentials | None, tls: bool
) -> grpc.ChannelCredentials | None:
    """Return the credentials a channel is opened with: ``credentials``, else system-root TLS.

    Args:
        credentials: Explicit credentials (custom roots, a client certificate for mutual
            TLS: ``grpc.ssl_channel_credentials(root, key, chain)``); they win over ``tls``.
        tls: Use TLS verified against the system's root certificates.
    """
    if credentials is not None:
        return credentials
    return grpc.ssl_channel_credentials() if tls else None

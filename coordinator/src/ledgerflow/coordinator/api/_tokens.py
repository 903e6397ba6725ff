"""Signed page tokens for ListRuns.

A token carries the position to resume after and a digest of the filter it was
issued for, signed with HMAC-SHA256: a token that was edited, truncated, or
replayed with another filter is refused with INVALID_ARGUMENT instead of
silently listing the wrong page. Every coordinator sharing a database must use
the same secret (``--page-token-secret`` / ``LEDGERFLOW_PAGE_TOKEN_SECRET``) for
tokens to work across replicas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from ledgerflow.coordinator.store import PagePosition, RunFilter
from ledgerflow.errors import InvalidArgumentError


def _filter_digest(flt: RunFilter) -> str:
    raw = json.dumps(
        [
            sorted(flt.statuses),
            flt.workflow_name,
            flt.created_after,
            flt.created_before,
            flt.namespace,
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class PageTokens:
    """Issues and checks page tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        """Create the codec.

        Args:
            secret: The HMAC key; share it between coordinators of one database.
        """
        self._secret = secret

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:16]

    def issue(self, flt: RunFilter, position: PagePosition) -> str:
        """Return the token that resumes listing ``flt`` after ``position``."""
        body = json.dumps(
            {"t": position.create_time, "r": position.run_id, "f": _filter_digest(flt)},
            separators=(",", ":"),
        ).encode()
        return base64.urlsafe_b64encode(self._sign(body) + body).decode().rstrip("=")

    def check(self, token: str, flt: RunFilter) -> PagePosition:
        """Return the position in ``token``.

        Raises:
            InvalidArgumentError: The token is malformed, tampered with, or for another filter.
        """
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, UnicodeEncodeError) as err:
            raise InvalidArgumentError("page_token", "is not a valid page token") from err
        signature, body = raw[:16], raw[16:]
        if len(signature) < 16 or not hmac.compare_digest(signature, self._sign(body)):
            raise InvalidArgumentError("page_token", "is not a valid page token")
        data = json.loads(body)
        if data["f"] != _filter_digest(flt):
            raise InvalidArgumentError("page_token", "was issued for a different filter")
        return PagePosition(create_time=int(data["t"]), run_id=str(data["r"]))

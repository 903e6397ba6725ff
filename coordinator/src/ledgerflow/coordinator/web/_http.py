"""JSON responses and the status mapping shared by every dashboard endpoint.

The dashboard speaks the API's language: a response body is the proto3 JSON mapping
of the RPC's response message (``int64`` values are strings, enums are their names,
``bytes`` are base64), and an error is the status code the gRPC API would have
returned, mapped to the nearest HTTP status, with the same message (which names
the offending field).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from ledgerflow.coordinator.api import status_code_for
from ledgerflow.errors import InvalidArgumentError, LedgerflowError, PayloadTooLargeError

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 413,
    "UNAVAILABLE": 503,
}
"""The HTTP status each gRPC status code travels as; anything else is a 500."""


def to_json(message: Message) -> dict[str, Any]:
    """Return the proto3 JSON mapping of ``message`` (field names as in the .proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def dumps(value: object) -> str:
    """Return compact JSON on one line (an SSE ``data:`` field may not contain a newline)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JSONResponse(Response):
    """A compact JSON response."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encode ``content`` as UTF-8 JSON."""
        return dumps(content).encode("utf-8")


def message_response(message: Message) -> JSONResponse:
    """Return a 200 response carrying ``message`` as proto3 JSON."""
    return JSONResponse(to_json(message))


def error_body(code: str, message: str, field: str = "") -> dict[str, Any]:
    """Return the JSON body of an error: ``{"error": {"code", "message", "field"?}}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


def error_response(status: int, code: str, message: str, field: str = "") -> JSONResponse:
    """Return an error response (see :func:`error_body`)."""
    return JSONResponse(error_body(code, message, field), status_code=status)


def domain_error_body(err: LedgerflowError) -> tuple[int, dict[str, Any]]:
    """Return the HTTP status and JSON body of a domain error, as the API would report it."""
    code = status_code_for(err).name
    field = err.field if isinstance(err, InvalidArgumentError) else ""
    return HTTP_STATUS.get(code, 500), error_body(code, str(err), field)


class UnsupportedMediaError(Exception):
    """A POST body was not ``application/json`` (answered 415)."""


async def json_body(request: Request, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Return the JSON object a POST carries.

    Only ``application/json`` is read: a cross-site page can send it only after a CORS
    preflight, which this server never grants, so no other site can post through a
    visitor's browser.

    Args:
        request: The request.
        max_bytes: Refuse a longer body, reading no further (for endpoints anyone may
            call); None reads it whole.

    Raises:
        UnsupportedMediaError: The body is not ``application/json``.
        PayloadTooLargeError: It is longer than ``max_bytes``.
        InvalidArgumentError: It is not a JSON object (field ``body``).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaError(
            f"the body must be application/json, got {content_type or 'no content type'}"
        )
    if max_bytes is None:
        raw = await request.body()
    else:
        # Read in chunks: a chunked body has no Content-Length to check up front.
        parts: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(f"body: must be at most {max_bytes} bytes")
            parts.append(chunk)
        raw = b"".join(parts)
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise InvalidArgumentError("body", f"is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("body", "must be a JSON object")
    return body


def str_field(body: Mapping[str, Any], name: str) -> str:
    """Return the string field ``name`` of a JSON body (``""`` when absent or null).

    Raises:
        InvalidArgumentError: The field is not a string (its value is not quoted back).
    """
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgumentError(name, f"must be a string, got {type(value).__name__}")
    return value

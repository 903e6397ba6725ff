"""JSON payloads: the default encoding of inputs, outputs and signal bodies."""

from __future__ import annotations

import json
from typing import Any

from ledgerflow.v1 import common_pb2

JSON_ENCODING = "json/plain"
"""The encoding name of a JSON payload."""


def json_payload(value: object) -> common_pb2.Payload:
    """Encode a JSON-compatible value as a payload.

    Args:
        value: A value ``json.dumps`` accepts (NaN and infinities are refused).

    Returns:
        The payload.

    Raises:
        ValueError: If the value is not JSON-compatible.
        TypeError: If the value is not JSON-compatible.
    """
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return common_pb2.Payload(encoding=JSON_ENCODING, data=data.encode("utf-8"))


def payload_value(payload: common_pb2.Payload) -> Any:
    """Decode a JSON payload.

    Args:
        payload: A payload with the JSON encoding (or no encoding).

    Returns:
        The decoded value.

    Raises:
        ValueError: If the payload is not JSON.
    """
    if payload.encoding not in ("", JSON_ENCODING):
        raise ValueError(f"payload encoding {payload.encoding!r} is not {JSON_ENCODING!r}")
    return json.loads(payload.data.decode("utf-8"))

"""Values ↔ JSON payloads, guided by the type hints of workflow bodies and step functions.

JSON is the default and only encoding for now (``json/plain``, through
``ledgerflow.ledger.json_payload``). Beyond JSON values, encoding understands
dataclasses, pydantic v2 models (anything with ``model_dump``; pydantic is never
imported, so it stays an optional dependency), enums, ``datetime``/``date`` (ISO
8601) and ``UUID`` (its string). Sets are sorted, so their encoding does not depend
on hash order.

Decoding is driven by a type hint: a dataclass is rebuilt field by field from its
own hints, a pydantic model through ``model_validate``, and ``list[X]``,
``tuple[...]``, ``dict[str, X]``, ``X | None``, ``Literal`` and ``Annotated`` are
followed. Without a hint (or with ``Any``) the plain JSON value comes back.

Step outputs always make the round trip, live as well as on replay, so the body
sees the same value either way (a tuple comes back as the hint says, or as a list
without one). Annotate step functions' return types to get dataclasses back.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import common_pb2


def to_jsonable(value: object) -> Any:
    """Convert ``value`` into plain JSON values (dicts, lists, str, numbers, bools, None).

    Args:
        value: The value to convert.

    Returns:
        A value ``json.dumps`` accepts.

    Raises:
        TypeError: If some part of the value has no JSON form.
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if isinstance(value, Mapping):
        return {_key(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [to_jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(
        f"a value of type {type(value).__name__} has no JSON form; use JSON values, "
        "dataclasses, pydantic models, enums, datetimes or UUIDs"
    )


def _key(key: object) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        return str(key.value)
    if isinstance(key, int | float | bool | uuid.UUID):
        return str(key)
    raise TypeError(f"a mapping key of type {type(key).__name__} has no JSON form")


def from_jsonable(data: Any, hint: Any) -> Any:
    """Rebuild a value of type ``hint`` from plain JSON values.

    Args:
        data: The decoded JSON value.
        hint: The expected type; None or ``Any`` returns ``data`` unchanged.

    Returns:
        The value.

    Raises:
        TypeError: If ``data`` cannot become a ``hint``.
        ValueError: If ``data`` cannot become a ``hint``.
    """
    if hint is None or hint is Any or hint is object:
        return data
    if hint is type(None):
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return from_jsonable(data, typing.get_args(hint)[0])
    if origin is typing.Union or origin is types.UnionType:
        return _from_union(data, typing.get_args(hint))
    if origin is typing.Literal:
        return data
    if origin is not None:
        return _from_generic(data, origin, typing.get_args(hint))
    if not isinstance(hint, type):
        return data  # A TypeVar, a string annotation that did not resolve, ...
    if dataclasses.is_dataclass(hint):
        return _from_dataclass(data, hint)
    validate = getattr(hint, "model_validate", None)
    if callable(validate):
        return validate(data)
    if issubclass(hint, enum.Enum):
        return hint(data)
    if issubclass(hint, datetime):
        return datetime.fromisoformat(data) if isinstance(data, str) else data
    if issubclass(hint, date):
        return date.fromisoformat(data) if isinstance(data, str) else data
    if issubclass(hint, uuid.UUID):
        return uuid.UUID(data) if isinstance(data, str) else data
    if hint is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if hint in (tuple, set, frozenset) and isinstance(data, list):
        return hint(data)
    return data


def _from_union(data: Any, args: tuple[Any, ...]) -> Any:
    if data is None and type(None) in args:
        return None
    candidates = [a for a in args if a is not type(None)]
    if len(candidates) == 1:
        return from_jsonable(data, candidates[0])
    for candidate in candidates:
        try:
            return from_jsonable(data, candidate)
        except (TypeError, ValueError, KeyError):
            continue
    return data


def _from_generic(data: Any, origin: Any, args: tuple[Any, ...]) -> Any:
    if origin in (list, set, frozenset) or _is_abc(origin, "Sequence", "Set", "Iterable"):
        if not isinstance(data, list):
            return data
        item = args[0] if args else None
        items = [from_jsonable(v, item) for v in data]
        return origin(items) if origin in (set, frozenset) else items
    if origin is tuple:
        if not isinstance(data, list):
            return data
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(v, args[0]) for v in data)
        if args and len(args) == len(data):
            return tuple(from_jsonable(v, a) for v, a in zip(data, args, strict=True))
        return tuple(data)
    if origin is dict or _is_abc(origin, "Mapping", "MutableMapping"):
        if not isinstance(data, dict):
            return data
        value_hint = args[1] if len(args) == 2 else None
        return {k: from_jsonable(v, value_hint) for k, v in data.items()}
    return data


def _is_abc(origin: Any, *names: str) -> bool:
    return getattr(origin, "__module__", "") == "collections.abc" and origin.__name__ in names


def _from_dataclass(data: Any, cls: type[Any]) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    hints = _type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.init and field.name in data:
            kwargs[field.name] = from_jsonable(data[field.name], hints.get(field.name))
    return cls(**kwargs)


def _type_hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:
        # An annotation that does not resolve (a class local to a function under
        # ``from __future__ import annotations``): fall back to plain JSON.
        return {}


def encode(value: object) -> common_pb2.Payload:
    """Encode a value as a JSON payload.

    Args:
        value: The value.

    Returns:
        The payload.

    Raises:
        TypeError: If the value has no JSON form.
        ValueError: If the value has no JSON form (NaN, infinities).
    """
    return json_payload(to_jsonable(value))


def decode(payload: common_pb2.Payload | None, hint: Any) -> Any:
    """Decode a payload into a value of type ``hint``; an absent or empty payload is None.

    Args:
        payload: The payload, or None.
        hint: The expected type.

    Returns:
        The value.

    Raises:
        TypeError: If the payload does not fit ``hint``.
        ValueError: If the payload is not JSON or does not fit ``hint``.
    """
    if payload is None or (not payload.data and not payload.encoding):
        return None
    return from_jsonable(payload_value(payload), hint)


def return_hint(fn: Callable[..., Any]) -> Any:
    """Return the declared return type of ``fn`` (None when it has none or it does not resolve).

    Looks through ``functools.partial`` and callable objects.

    Args:
        fn: A function, a partial, or a callable object.

    Returns:
        The return annotation, resolved.
    """
    try:
        return _return_hint_cached(fn)
    except TypeError:  # Unhashable callable: resolve it every time.
        return _return_hint(fn)


@functools.lru_cache(maxsize=4096)
def _return_hint_cached(fn: Callable[..., Any]) -> Any:
    return _return_hint(fn)


def _return_hint(fn: Callable[..., Any]) -> Any:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(target, "__call__", target)  # noqa: B004 - a callable object's hints
    return _type_hints(target).get("return")


def param_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Return the resolved annotations of ``fn`` (empty when they do not resolve).

    Args:
        fn: A function.

    Returns:
        Annotations by parameter name, ``"return"`` included.
    """
    return _type_hints(fn)

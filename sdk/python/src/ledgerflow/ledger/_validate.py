"""Validation of ledger events before they can reach a ledger.

A malformed event must never corrupt a run, so every event is checked before
it is appended or reduced: the run id, the payload case, the ids each payload
needs, every enum value (proto3 keeps unknown numbers silently) and every
timestamp (it must lie in Timestamp's range). Errors name the offending field.
"""

from __future__ import annotations

from functools import cache

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ledgerflow.errors import InvalidEventError
from ledgerflow.v1 import ledger_pb2 as pb

MAX_ID_LENGTH = 255
"""The longest run, step, waitpoint or signal id accepted, in characters."""

MAX_INT64 = 2**63 - 1
"""The largest seq, offset or count a ledger can hold (they are stored as BIGINT)."""

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_MAX_SECONDS = 253_402_300_799
_MIN_SECONDS = -62_135_596_800

# The id each payload must carry, by oneof case.
_REQUIRED_IDS: dict[str, str] = {
    "step_scheduled": "step_id",
    "step_started": "step_id",
    "step_progress": "step_id",
    "step_completed": "step_id",
    "step_failed": "step_id",
    "step_skipped": "step_id",
    "compensation_started": "step_id",
    "compensation_completed": "step_id",
    "compensation_failed": "step_id",
    "checkpoint_recorded": "step_id",
    "waitpoint_registered": "waitpoint_id",
    "waitpoint_resolved": "waitpoint_id",
    "signal_received": "name",
}


def check_id(value: str, field: str) -> None:
    """Check that ``value`` is a usable id: non-empty, not blank, at most 255 characters, no NUL.

    Args:
        value: The id.
        field: The field's name for the error message.

    Raises:
        InvalidEventError: If the id is empty, blank, too long or holds a NUL character.
    """
    if not value.strip():
        raise InvalidEventError(field, "must be a non-empty string")
    # Postgres text cannot hold NUL: refused here rather than failing the commit.
    if "\x00" in value:
        raise InvalidEventError(field, "must not contain a NUL character")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEventError(
            field, f"is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
        )


def validate_event(event: pb.LedgerEvent) -> None:
    """Check a ledger event and raise on the first problem found.

    Args:
        event: The event.

    Raises:
        InvalidEventError: If the event is malformed; its ``field`` names the offending field.
    """
    check_id(event.run_id, "run_id")
    if event.seq < 0:
        raise InvalidEventError("seq", "must not be negative")
    if not event.HasField("event_time"):
        raise InvalidEventError("event_time", "is required")
    case = event.WhichOneof("payload")
    if case is None:
        raise InvalidEventError("payload", "is required (no event type set)")
    _check_message(event, "")
    payload = getattr(event, case)
    id_field = _REQUIRED_IDS.get(case)
    if id_field is not None:
        check_id(getattr(payload, id_field), f"{case}.{id_field}")
    if case == "log_appended":
        log = event.log_appended
        if log.HasField("channel_offset") and log.channel_offset < 0:
            raise InvalidEventError("log_appended.channel_offset", "must not be negative")
        if log.HasField("channel_offset") and log.channel_offset > MAX_INT64 - len(log.lines):
            raise InvalidEventError(
                "log_appended.channel_offset", "plus the number of lines overflows int64"
            )
        # Lines and channels are stored as text, which cannot hold NUL (Postgres).
        if "\x00" in log.channel:
            raise InvalidEventError("log_appended.channel", "must not contain a NUL character")
        for i, line in enumerate(log.lines):
            if "\x00" in line:
                raise InvalidEventError(
                    f"log_appended.lines[{i}]", "must not contain a NUL character"
                )
        if log.HasField("first_seq") and log.first_seq < 1:
            raise InvalidEventError("log_appended.first_seq", "must be at least 1")
        if log.dropped_line_count < 0:
            raise InvalidEventError("log_appended.dropped_line_count", "must not be negative")
    elif case == "metadata_updated":
        for i, m in enumerate(event.metadata_updated.mutations):
            where = f"metadata_updated.mutations[{i}]"
            if m.op == pb.METADATA_OP_UNSPECIFIED:
                raise InvalidEventError(f"{where}.op", "is required")
            if not m.key:
                raise InvalidEventError(f"{where}.key", "must be a non-empty string")
    elif case in ("step_scheduled", "step_started", "step_completed", "step_failed") and (
        getattr(payload, "attempt") < 0  # noqa: B009 - the case picks the message type
    ):
        raise InvalidEventError(f"{case}.attempt", "must not be negative")


def check_field_ranges(msg: Message, path: str) -> None:
    """Check every set enum value and Timestamp/Duration range in ``msg``, at any depth.

    For request messages that are not ledger events but turn into them (a status patch).

    Args:
        msg: The message.
        path: The message's field path, prefixed to the offending field's name.

    Raises:
        InvalidEventError: A field holds an unknown enum value or an out-of-range time.
    """
    _check_message(msg, path)


# What _check_message does with a set field, decided once per field descriptor:
# the walk runs on every appended event, and re-deciding it from descriptors
# (options lookups, type tests) was most of its cost.
_SKIP, _ENUM, _MESSAGE, _MESSAGES, _MESSAGE_MAP = range(5)
_TIME_TYPES = frozenset({_TIMESTAMP, _DURATION})


@cache
def _worth_walking(descriptor: Descriptor) -> bool:
    """Whether a message type can hold anything to check (an enum, a time), at any depth."""
    if descriptor.full_name in _TIME_TYPES:
        return True
    _worth_walking_in_progress.add(descriptor.full_name)
    try:
        for fd in descriptor.fields:
            if fd.type == FieldDescriptor.TYPE_ENUM:
                return True
            child = fd.message_type
            if (
                child is not None
                and child.full_name not in _worth_walking_in_progress
                and _worth_walking(child)
            ):
                return True
        return False
    finally:
        _worth_walking_in_progress.discard(descriptor.full_name)


_worth_walking_in_progress: set[str] = set()


@cache
def _plan(fd: FieldDescriptor) -> tuple[int, frozenset[int]]:
    """How to check a set field: the action and, for enums, the known numbers."""
    if fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None:
        return _ENUM, frozenset(fd.enum_type.values_by_number)
    child = fd.message_type
    if fd.type != FieldDescriptor.TYPE_MESSAGE or child is None:
        return _SKIP, frozenset()
    if child.GetOptions().map_entry:
        value = child.fields_by_name["value"].message_type
        return (_MESSAGE_MAP if value is not None and _worth_walking(value) else _SKIP), frozenset()
    if not _worth_walking(child):
        return _SKIP, frozenset()
    return (_MESSAGES if fd.is_repeated else _MESSAGE), frozenset()


def _check_message(msg: Message, path: str) -> None:
    """Recursively check enum values and time ranges of every set field."""
    full_name = msg.DESCRIPTOR.full_name
    if full_name in _TIME_TYPES:
        seconds = getattr(msg, "seconds")  # noqa: B009 - well-known types are untyped here
        nanos = getattr(msg, "nanos")  # noqa: B009
        if full_name == _TIMESTAMP:
            if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS) or not (0 <= nanos < 1_000_000_000):
                raise InvalidEventError(path, "is outside the valid timestamp range")
        elif not (-315_576_000_000 <= seconds <= 315_576_000_000) or abs(nanos) >= 1_000_000_000:
            raise InvalidEventError(path, "is outside the valid duration range")
        return
    for field, value in msg.ListFields():
        action, known = _plan(field)
        if action == _SKIP:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if action == _ENUM:
            for v in value if field.is_repeated else (value,):
                if v not in known:
                    raise InvalidEventError(name, f"has unknown enum value {v}")
        elif action == _MESSAGE:
            _check_message(value, name)
        elif action == _MESSAGES:
            for i, item in enumerate(value):
                _check_message(item, f"{name}[{i}]")
        else:
            for key, item in value.items():
                _check_message(item, f"{name}[{key!r}]")

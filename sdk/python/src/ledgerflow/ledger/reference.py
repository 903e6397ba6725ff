"""The reference ledger's JSON shapes, bridged to and from the ``ledgerflow.v1`` protos.

Producers that already speak the reference ledger's JSON (``type: "run.created"``,
camelCase fields, epoch-millisecond times, as in ``shared/reference/000_*.txt``)
can feed ledgerflow through this codec, and its snapshots can be printed back in
the reference's shape (``ledgerflow ledger reduce --format reference``).

Mapping choices:

- ``null`` and a missing key mean the same thing, as they do for the
  reference's ``??`` operators; snapshots are printed with ``null`` for unset
  top-level fields, as the reference's empty snapshot has them.
- Times are epoch milliseconds (fractions allowed) and become Timestamps.
- ``error`` strings become ``ErrorInfo.message``; ``result``, ``resultSummary``
  and ``summary`` values become JSON payloads.
- Sources ``temporal`` and ``convex`` become ``EVENT_SOURCE_EXTERNAL``.
- Progress counters must be integers (the proto fields are int64), and a
  ``firstSeq`` or ``channelOffset`` below its valid range is dropped — the
  reference ignores such values too.
- Times keep nanosecond precision: fractional milliseconds are exact where the
  reference's floating-point arithmetic is not (a 0.1 → 0.3 run lasts 0.2 ms
  here, 0.19999999999999998 there), and finer than a nanosecond is rounded.

Input the reference would take but a durable ledger must not, refused with an
:class:`~ledgerflow.errors.InvalidEventError` naming the field (the CLI exits 2):

- a missing, empty or blank ``runId`` or ``stepId`` (ids key the ledger);
- a missing ``occurredAt`` or ``source``, a time outside years 1-9999;
- a status that is not one of the reference's own words (``run.created`` with
  ``"pending"``, ``step.progress`` with ``"bogus"``) — the reference would store
  the raw string and later mis-handle it;
- numbers that must be integers (``seq``, ``firstSeq``, ``channelOffset``,
  progress counters, ``deltaCursor``) given with a fraction;
- values of the wrong JSON type (``logsTruncated: "yes"``, ``lines: "abc"``, a
  non-string status in a patch) and strings with lone surrogates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ledgerflow.errors import InvalidEventError
from ledgerflow.ledger._payload import json_payload, payload_value
from ledgerflow.ledger._status import STATUS_WORDS
from ledgerflow.ledger._time import (
    MAX_TIMESTAMP_NANOS,
    MIN_TIMESTAMP_NANOS,
    NANOS_PER_MILLI,
    duration_nanos,
    set_nanos,
    to_nanos,
)
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb

_SOURCES: dict[str, pb.EventSource.ValueType] = {
    "worker": pb.EVENT_SOURCE_WORKER,
    "coordinator": pb.EVENT_SOURCE_COORDINATOR,
    "system": pb.EVENT_SOURCE_SYSTEM,
    "temporal": pb.EVENT_SOURCE_EXTERNAL,
    "convex": pb.EVENT_SOURCE_EXTERNAL,
}
_SOURCE_WORDS: dict[pb.EventSource.ValueType, str] = {
    pb.EVENT_SOURCE_UNSPECIFIED: "system",
    pb.EVENT_SOURCE_WORKER: "worker",
    pb.EVENT_SOURCE_COORDINATOR: "coordinator",
    pb.EVENT_SOURCE_CLIENT: "system",
    pb.EVENT_SOURCE_SYSTEM: "system",
    pb.EVENT_SOURCE_EXTERNAL: "system",
}
_RUN_STATUSES: dict[str, pb.RunStatus.ValueType] = {
    word: status for status, word in STATUS_WORDS.items() if status != pb.RUN_STATUS_UNSPECIFIED
}
_STEP_STATUSES: dict[str, pb.StepStatus.ValueType] = {
    "running": pb.STEP_STATUS_RUNNING,
    "completed": pb.STEP_STATUS_COMPLETED,
    "failed": pb.STEP_STATUS_FAILED,
    "skipped": pb.STEP_STATUS_SKIPPED,
    # ledgerflow's own step states, printed in the same lower-case style.
    "scheduled": pb.STEP_STATUS_SCHEDULED,
    "retrying": pb.STEP_STATUS_RETRYING,
}
_STEP_WORDS = {v: k for k, v in _STEP_STATUSES.items()}
_STEP_EVENT_CASES = {
    "step.started": "step_started",
    "step.progress": "step_progress",
    "step.completed": "step_completed",
    "step.failed": "step_failed",
    "step.skipped": "step_skipped",
}


def _check_unicode(value: str, field: str) -> None:
    # JSON can carry lone surrogates ("\ud800"); protobuf strings must be valid UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidEventError(field, "is not valid Unicode (lone surrogate)") from err


class _Reader:
    """Typed access to one JSON object, with errors that name the field."""

    def __init__(self, obj: object, path: str) -> None:
        if not isinstance(obj, Mapping):
            raise InvalidEventError(path, "must be a JSON object")
        self.obj: Mapping[str, Any] = obj
        self.path = path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.obj.get(key)

    def string(self, key: str, *, required: bool = False, non_empty: bool = False) -> str | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidEventError(self._name(key), "is required")
            return None
        if not isinstance(value, str):
            raise InvalidEventError(self._name(key), "must be a string")
        _check_unicode(value, self._name(key))
        if non_empty and not value.strip():
            raise InvalidEventError(self._name(key), "must be a non-empty string")
        return value

    def number(self, key: str, *, required: bool = False) -> float | int | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidEventError(self._name(key), "is required")
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidEventError(self._name(key), "must be a finite number")
        return value

    def integer(self, key: str) -> int | None:
        value = self.number(key)
        if value is None:
            return None
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidEventError(self._name(key), "must be an integer")
            value = int(value)
        if not -(2**63) <= value < 2**63:
            raise InvalidEventError(self._name(key), "is out of the 64-bit integer range")
        return value

    def millis(self, key: str, *, required: bool = False) -> int | None:
        value = self.number(key, required=required)
        if value is None:
            return None
        nanos = (
            value * NANOS_PER_MILLI if isinstance(value, int) else round(value * NANOS_PER_MILLI)
        )
        if not MIN_TIMESTAMP_NANOS <= nanos <= MAX_TIMESTAMP_NANOS:
            raise InvalidEventError(self._name(key), "is outside the valid timestamp range")
        return int(nanos)

    def boolean(self, key: str) -> bool:
        value = self.obj.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise InvalidEventError(self._name(key), "must be a boolean")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.obj.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidEventError(self._name(key), "must be an array of strings")
        for i, v in enumerate(value):
            _check_unicode(v, f"{self._name(key)}[{i}]")
        return list(value)

    def payload(self, key: str) -> common_pb2.Payload | None:
        value = self.obj.get(key)
        if value is None:
            return None
        try:
            return json_payload(value)
        except (TypeError, ValueError) as err:
            raise InvalidEventError(self._name(key), f"is not JSON-encodable: {err}") from err


def _millis_out(ts_nanos: int) -> int | float:
    whole, rem = divmod(ts_nanos, NANOS_PER_MILLI)
    return whole if rem == 0 else ts_nanos / NANOS_PER_MILLI


def _time_out(owner: Any, name: str) -> int | float | None:
    return _millis_out(to_nanos(getattr(owner, name))) if owner.HasField(name) else None


def _read_progress(r: _Reader) -> pb.StepProgress:
    progress = pb.StepProgress()
    for key, name in (("completed", "completed"), ("total", "total"), ("failed", "failed")):
        value = r.integer(key)
        if value is not None:
            setattr(progress, name, value)
    message = r.string("message")
    if message is not None:
        progress.message = message
    namespace = r.string("artifactTableNamespace")
    if namespace is not None:
        progress.artifact_namespace = namespace
    for key, name in (
        ("startedAt", "start_time"),
        ("completedAt", "completion_time"),
        ("updatedAt", "update_time"),
    ):
        nanos = r.millis(key)
        if nanos is not None:
            set_nanos(getattr(progress, name), nanos)
    return progress


def event_from_json(obj: object) -> pb.LedgerEvent:
    """Convert one reference-shaped event to a LedgerEvent.

    Args:
        obj: A decoded JSON object such as ``{"type": "run.created", "runId": ...}``.

    Returns:
        The event.

    Raises:
        InvalidEventError: If the object is not a well-formed reference event.
    """
    r = _Reader(obj, "")
    kind = r.string("type", required=True)
    run_id = r.string("runId", required=True, non_empty=True)
    assert kind is not None
    assert run_id is not None
    event = pb.LedgerEvent(run_id=run_id)
    occurred = r.millis("occurredAt", required=True)
    assert occurred is not None
    set_nanos(event.event_time, occurred)
    source = r.string("source", required=True)
    if source not in _SOURCES:
        raise InvalidEventError("source", f"must be one of {', '.join(sorted(_SOURCES))}")
    event.source = _SOURCES[source]
    seq = r.integer("seq")
    if seq is not None and seq > 0:
        event.seq = seq

    if kind == "run.created":
        created = event.run_created
        created.SetInParent()
        name = r.string("playName")
        if name is not None:
            created.workflow_name = name
        status = r.string("status")
        if status is not None:
            if status not in _RUN_STATUSES:
                raise InvalidEventError("status", f"unknown run status {status!r}")
            created.status = _RUN_STATUSES[status]
        r.string("runtimeBackend")
    elif kind == "run.started":
        started = event.run_started
        started.SetInParent()
        name = r.string("playName")
        if name is not None:
            started.workflow_name = name
        backend = r.string("runtimeBackend")
        if backend:
            started.runtime.backend = backend
    elif kind == "run.completed":
        completed = event.run_completed
        completed.SetInParent()
        if (result := r.payload("result")) is not None:
            completed.result.CopyFrom(result)
        if (summary := r.payload("resultSummary")) is not None:
            completed.result_summary.CopyFrom(summary)
    elif kind in ("run.failed", "run.cancelled"):
        ended = event.run_failed if kind == "run.failed" else event.run_cancelled
        ended.SetInParent()
        error = r.string("error")
        if error is not None:
            ended.error.message = error
        if (result := r.payload("result")) is not None:
            ended.result.CopyFrom(result)
    elif kind in _STEP_EVENT_CASES:
        _read_step_event(r, event, _STEP_EVENT_CASES[kind])
    elif kind == "log.appended":
        log = event.log_appended
        log.SetInParent()
        log.lines.extend(r.strings("lines"))
        first_seq = r.integer("firstSeq")
        if first_seq is not None and first_seq > 0:
            log.first_seq = first_seq
        offset = r.integer("channelOffset")
        if offset is not None and offset >= 0:
            log.channel_offset = offset
        log.logs_truncated = r.boolean("logsTruncated")
    elif kind == "sheet.summary.updated":
        summary_event = event.summary_updated
        summary_event.SetInParent()
        namespace = r.string("tableNamespace")
        if namespace is not None:
            summary_event.namespace = namespace
        cursor = r.integer("deltaCursor")
        if cursor is not None:
            summary_event.delta_cursor = cursor
        if (summary := r.payload("summary")) is not None:
            summary_event.summary.CopyFrom(summary)
    else:
        raise InvalidEventError("type", f"unknown event type {kind!r}")
    return event


def _read_step_event(r: _Reader, event: pb.LedgerEvent, case: str) -> None:
    step_id = r.string("stepId", required=True, non_empty=True)
    payload = getattr(event, case)
    payload.SetInParent()
    payload.step_id = step_id
    label = r.string("label")
    if label is not None:
        payload.label = label
    kind = r.string("kind")
    if kind is not None:
        payload.kind = kind
    if case == "step_progress":
        status = r.string("status")
        if status is not None:
            if status not in ("running", "completed", "failed", "skipped"):
                raise InvalidEventError("status", f"unknown step status {status!r}")
            payload.status = _STEP_STATUSES[status]
        payload.progress.CopyFrom(_read_progress(_Reader(r.raw("progress"), "progress")))
        return
    namespace = r.string("artifactTableNamespace")
    if namespace is not None:
        payload.artifact_namespace = namespace
    if case == "step_failed":
        error = r.string("error")
        if error is not None:
            payload.error.message = error


def status_patch_from_json(obj: object) -> rpb.StatusPatch:
    """Convert a reference-shaped status patch (``PlayRunLedgerStatusPatch``) to a StatusPatch.

    Args:
        obj: The decoded JSON object.

    Returns:
        The patch.

    Raises:
        InvalidEventError: If the object is malformed.
    """
    r = _Reader(obj, "")
    run_id = r.string("runId", required=True, non_empty=True)
    assert run_id is not None
    patch = rpb.StatusPatch(run_id=run_id, status=r.string("status") or "")
    patch.workflow_name = r.string("playName") or ""
    error = r.string("error")
    if error is not None:
        patch.error.message = error
    patch.runtime_backend = r.string("runtimeBackend") or ""
    checkpoint = r.millis("lastCheckpointAt")
    if checkpoint is not None:
        set_nanos(patch.last_checkpoint_time, checkpoint)
    if r.has("liveLogs"):
        patch.live_logs.extend(r.strings("liveLogs"))
    offset = r.integer("liveLogsChannelOffset")
    if offset is not None:
        patch.live_logs_channel_offset = offset
    live = r.raw("liveNodeProgress")
    if isinstance(live, Mapping):
        for step_id, raw in live.items():
            # The reference skips entries that are not objects.
            if isinstance(raw, Mapping):
                progress = _read_progress(_Reader(raw, f"liveNodeProgress.{step_id}"))
                patch.live_step_progress[step_id].CopyFrom(progress)
    if (result := r.payload("result")) is not None:
        patch.result.CopyFrom(result)
    return patch


def _progress_json(p: pb.StepProgress) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("completed", "total", "failed", "message"):
        if p.HasField(name):
            out[name] = getattr(p, name)
    if p.HasField("artifact_namespace"):
        out["artifactTableNamespace"] = p.artifact_namespace
    for key, name in (
        ("startedAt", "start_time"),
        ("completedAt", "completion_time"),
        ("updatedAt", "update_time"),
    ):
        value = _time_out(p, name)
        if value is not None:
            out[key] = value
    return out


def _optional(owner: Any, name: str) -> Any:
    return getattr(owner, name) if owner.HasField(name) else None


def _step_json(step: pb.StepSnapshot) -> dict[str, Any]:
    out: dict[str, Any] = {"stepId": step.step_id}
    if step.HasField("label"):
        out["label"] = step.label
    if step.HasField("kind"):
        out["kind"] = step.kind
    out["status"] = _STEP_WORDS.get(step.status, "running")
    out["artifactTableNamespace"] = _optional(step, "artifact_namespace")
    out["startedAt"] = _time_out(step, "start_time")
    out["completedAt"] = _time_out(step, "completion_time")
    out["updatedAt"] = _time_out(step, "update_time")
    out["progress"] = _progress_json(step.progress) if step.HasField("progress") else None
    return out


def snapshot_to_json(snap: pb.RunSnapshot) -> dict[str, Any]:
    """Render a snapshot in the reference's ``PlayRunLedgerSnapshot`` shape.

    Args:
        snap: The snapshot.

    Returns:
        A JSON-ready dict with the reference's keys (unset fields are ``null``;
        ``result`` and ``resultSummary`` are omitted when unset, as the reference omits them).
    """
    steps = {step_id: _step_json(snap.steps[step_id]) for step_id in snap.ordered_step_ids}
    out: dict[str, Any] = {
        "runId": snap.run_id,
        "playName": _optional(snap, "workflow_name"),
        "status": STATUS_WORDS.get(snap.status, "unknown"),
        "error": snap.error.message if snap.HasField("error") else None,
        "createdAt": _time_out(snap, "create_time"),
        "startedAt": _time_out(snap, "start_time"),
        "updatedAt": _time_out(snap, "update_time"),
        "finishedAt": _time_out(snap, "finish_time"),
        "durationMs": (
            _millis_out(duration_nanos(snap.duration)) if snap.HasField("duration") else None
        ),
        "orderedStepIds": list(snap.ordered_step_ids),
        "stepsById": steps,
        "logTail": list(snap.log_tail),
        "totalLogCount": snap.total_log_count,
        "logsTruncated": snap.logs_truncated,
        "activeStepId": _optional(snap, "active_step_id"),
        "activeArtifactTableNamespace": _optional(snap, "active_artifact_namespace"),
        "resultTableNamespace": _optional(snap, "result_namespace"),
    }
    if snap.HasField("result_summary"):
        out["resultSummary"] = payload_value(snap.result_summary)
    if snap.HasField("result"):
        out["result"] = payload_value(snap.result)
    return out


def event_to_json(event: pb.LedgerEvent) -> dict[str, Any]:
    """Render an event in the reference's JSON shape.

    Events the reference has no type for are rendered with ledgerflow's own
    dotted name (``run.timed_out``, ``run.terminated``, ``compensation.started``, ...)
    and no payload fields beyond the common ones and ``error`` where there is one.

    Args:
        event: The event.

    Returns:
        A JSON-ready dict.
    """
    case = event.WhichOneof("payload") or ""
    out: dict[str, Any] = {
        "type": case.replace("_", ".", 1),
        "runId": event.run_id,
        "occurredAt": _millis_out(to_nanos(event.event_time)),
        "source": _SOURCE_WORDS.get(event.source, "system"),
    }
    if event.seq:
        out["seq"] = event.seq
    if case == "run_created":
        e = event.run_created
        out["playName"] = _optional(e, "workflow_name")
        if e.status != pb.RUN_STATUS_UNSPECIFIED:
            out["status"] = STATUS_WORDS[e.status]
    elif case == "run_started":
        out["playName"] = _optional(event.run_started, "workflow_name")
        out["runtimeBackend"] = event.run_started.runtime.backend or None
    elif case == "run_completed":
        if event.run_completed.HasField("result"):
            out["result"] = payload_value(event.run_completed.result)
        if event.run_completed.HasField("result_summary"):
            out["resultSummary"] = payload_value(event.run_completed.result_summary)
    elif case in ("run_failed", "run_cancelled", "run_timed_out"):
        ended = getattr(event, case)
        out["error"] = ended.error.message if ended.HasField("error") else None
        if ended.HasField("result"):
            out["result"] = payload_value(ended.result)
    elif case == "run_terminated":
        out["error"] = event.run_terminated.reason or None
        if event.run_terminated.HasField("result"):
            out["result"] = payload_value(event.run_terminated.result)
    elif case in _STEP_EVENT_CASES.values():
        out["type"] = "step." + case.removeprefix("step_")
        payload = getattr(event, case)
        out["stepId"] = payload.step_id
        for key in ("label", "kind"):
            if payload.HasField(key):
                out[key] = getattr(payload, key)
        if case == "step_progress":
            if payload.status != pb.STEP_STATUS_UNSPECIFIED:
                out["status"] = _STEP_WORDS[payload.status]
            out["progress"] = _progress_json(payload.progress)
        else:
            out["artifactTableNamespace"] = _optional(payload, "artifact_namespace")
            if case == "step_failed":
                out["error"] = payload.error.message if payload.HasField("error") else None
    elif case == "log_appended":
        log = event.log_appended
        out["lines"] = list(log.lines)
        if log.HasField("first_seq"):
            out["firstSeq"] = log.first_seq
        if log.HasField("channel_offset"):
            out["channelOffset"] = log.channel_offset
        if log.logs_truncated:
            out["logsTruncated"] = True
    elif case == "summary_updated":
        out["type"] = "sheet.summary.updated"
        out["tableNamespace"] = _optional(event.summary_updated, "namespace")
        if event.summary_updated.HasField("delta_cursor"):
            out["deltaCursor"] = event.summary_updated.delta_cursor
        if event.summary_updated.HasField("summary"):
            out["summary"] = payload_value(event.summary_updated.summary)
    return out

"""Request building and response shaping shared by Client and SyncClient.

Everything here is pure: the two clients differ only in how they wait for the
coordinator, so every decision about what goes on the wire lives in one place.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ledgerflow.errors import (
    CoordinatorUnavailableError,
    InvalidArgumentError,
    LedgerflowError,
    RunCancelledError,
    RunEndedError,
    RunFailedError,
    RunTerminatedError,
    RunTimedOutError,
)
from ledgerflow.v1 import common_pb2, ledger_pb2, run_service_pb2
from ledgerflow.workflow import WorkflowDefinition

# The engine's own conversion, so a value a body receives is exactly what the client sent.
from ledgerflow.workflow._convert import decode, encode

DEFAULT_RPC_TIMEOUT = 30.0
"""Seconds a unary call may take before it fails as unavailable (streams have no deadline)."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds ``connect`` waits for the coordinator before giving up."""

RunStatusLike = int | str
"""A run status: a ``RunStatus`` value, its name, or its short name (``"running"``)."""

_STATUS_PREFIX = "RUN_STATUS_"


@dataclass(frozen=True, slots=True)
class StartRunResult:
    """What StartRun answered.

    Attributes:
        snapshot: The run's snapshot.
        created: Whether this call created the run (False when an existing run with the
            same run id or idempotency key was returned).
    """

    snapshot: ledger_pb2.RunSnapshot
    created: bool

    @property
    def run_id(self) -> str:
        """The run's id (chosen by the coordinator when the request left it empty)."""
        return self.snapshot.run_id


@dataclass(frozen=True, slots=True)
class ListRunsPage:
    """One page of ListRuns.

    Attributes:
        runs: The page's runs, newest first.
        next_page_token: Pass as ``page_token`` for the next page; empty on the last page.
    """

    runs: list[run_service_pb2.RunSummary]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class EventsPage:
    """One page of a run's ledger.

    Attributes:
        events: The page's events in seq order.
        has_more: Whether events after the page exist; continue after the last event's seq.
    """

    events: list[ledger_pb2.LedgerEvent]
    has_more: bool


@cache
def default_identity() -> str:
    """Return ``user@host`` for this process, recorded with cancellations and signals."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (common in containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def run_status(value: RunStatusLike) -> ledger_pb2.RunStatus.ValueType:
    """Resolve a run status given by value, name or short name.

    Args:
        value: ``RUN_STATUS_RUNNING``'s value, ``"RUN_STATUS_RUNNING"`` or ``"running"``.

    Returns:
        The status value.

    Raises:
        InvalidArgumentError: If no run status has that value or name.
    """
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith(_STATUS_PREFIX):
            name = _STATUS_PREFIX + name
        try:
            return ledger_pb2.RunStatus.Value(name)
        except ValueError:
            pass
    elif value in ledger_pb2.RunStatus.values():
        return ledger_pb2.RunStatus.ValueType(value)
    raise InvalidArgumentError("statuses", f"unknown run status {value!r}")


def status_name(status: ledger_pb2.RunStatus.ValueType) -> str:
    """Return a status's short name, e.g. ``"running"`` (the inverse of :func:`run_status`)."""
    try:
        name = ledger_pb2.RunStatus.Name(status)
    except ValueError:  # a status added to the protos after this client was built
        return str(int(status))
    return name.removeprefix(_STATUS_PREFIX).lower()


def payload(value: object, field: str) -> common_pb2.Payload:
    """Encode a value as the workflow engine does; a ``Payload`` passes through (custom codecs).

    JSON values, dataclasses, pydantic models, enums, datetimes and UUIDs are encoded
    as JSON (see ``ledgerflow.workflow._convert``).

    Raises:
        InvalidArgumentError: If the value has no JSON form.
    """
    if isinstance(value, common_pb2.Payload):
        return value
    try:
        return encode(value)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(field, f"not JSON-encodable: {err}") from err


def timestamp(value: datetime, field: str) -> Timestamp:
    """Convert an aware datetime to a Timestamp.

    Raises:
        InvalidArgumentError: If the datetime is naive: local time or UTC would be a guess.
    """
    if value.utcoffset() is None:
        raise InvalidArgumentError(field, "must be timezone-aware")
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def request_namespace(per_call: str | None, client: str | None) -> str:
    """Return the namespace a request names: the call's, else the client's; empty for none.

    The coordinator validates the name (and names the field when it refuses one), so it
    is not checked here: its rules live in one place.
    """
    return (client or "") if per_call is None else per_call


def run_filter(
    statuses: Iterable[RunStatusLike],
    workflow_name: str,
    created_after: datetime | None,
    created_before: datetime | None,
    namespace: str = "",
) -> run_service_pb2.RunFilter:
    """Build a RunFilter; empty arguments select everything the caller may see."""
    selected = run_service_pb2.RunFilter(
        statuses=[run_status(s) for s in statuses],
        workflow_name=workflow_name,
        namespace=namespace,
    )
    if created_after is not None:
        selected.created_after.CopyFrom(timestamp(created_after, "filter.created_after"))
    if created_before is not None:
        selected.created_before.CopyFrom(timestamp(created_before, "filter.created_before"))
    return selected


def start_run(
    workflow_name: str,
    input: object,
    *,
    run_id: str,
    idempotency_key: str,
    tags: Iterable[str],
    workflow_version: str,
    execution_timeout: timedelta | None,
    namespace: str = "",
) -> run_service_pb2.StartRunRequest:
    """Build a StartRunRequest; the input is always sent, so ``None`` arrives as JSON null."""
    request = run_service_pb2.StartRunRequest(
        workflow_name=workflow_name,
        workflow_version=workflow_version,
        input=payload(input, "input"),
        run_id=run_id,
        idempotency_key=idempotency_key,
        tags=list(tags),
        namespace=namespace,
    )
    if execution_timeout is not None:
        timeout = Duration()
        timeout.FromTimedelta(execution_timeout)
        request.execution_timeout.CopyFrom(timeout)
    return request


def list_runs(
    selected: run_service_pb2.RunFilter, page_size: int, page_token: str
) -> run_service_pb2.ListRunsRequest:
    """Build a ListRunsRequest."""
    return run_service_pb2.ListRunsRequest(
        filter=selected, page_size=page_size, page_token=page_token
    )


def signal_run(
    run_id: str, name: str, body: object, *, request_id: str, identity: str
) -> run_service_pb2.SignalRunRequest:
    """Build a SignalRunRequest; the body is always sent, so ``None`` arrives as JSON null."""
    return run_service_pb2.SignalRunRequest(
        run_id=run_id,
        signal_name=name,
        payload=payload(body, "payload"),
        request_id=request_id,
        identity=identity,
    )


def cancel_run(run_id: str, reason: str, identity: str) -> run_service_pb2.CancelRunRequest:
    """Build a CancelRunRequest."""
    return run_service_pb2.CancelRunRequest(run_id=run_id, reason=reason, identity=identity)


def get_run(run_id: str) -> run_service_pb2.GetRunRequest:
    """Build a GetRunRequest."""
    return run_service_pb2.GetRunRequest(run_id=run_id)


def get_events(run_id: str, after_seq: int, page_size: int) -> run_service_pb2.GetEventsRequest:
    """Build a GetEventsRequest."""
    return run_service_pb2.GetEventsRequest(run_id=run_id, after_seq=after_seq, page_size=page_size)


def watch_run(
    run_id: str, after_seq: int, skip_intermediate: bool = False
) -> run_service_pb2.WatchRunRequest:
    """Build a WatchRunRequest."""
    return run_service_pb2.WatchRunRequest(
        run_id=run_id, after_seq=after_seq, skip_intermediate=skip_intermediate
    )


def watch_runs(
    selected: run_service_pb2.RunFilter, include_existing: bool
) -> run_service_pb2.WatchRunsRequest:
    """Build a WatchRunsRequest."""
    return run_service_pb2.WatchRunsRequest(filter=selected, include_existing=include_existing)


def tail_logs(run_id: str, from_seq: int, follow: bool) -> run_service_pb2.TailLogsRequest:
    """Build a TailLogsRequest."""
    return run_service_pb2.TailLogsRequest(run_id=run_id, from_seq=from_seq, follow=follow)


def append_events(
    events: Iterable[ledger_pb2.LedgerEvent], batch_id: str
) -> run_service_pb2.AppendEventsRequest:
    """Build an AppendEventsRequest."""
    return run_service_pb2.AppendEventsRequest(batch_id=batch_id, events=list(events))


def report_status(
    patch: run_service_pb2.StatusPatch, batch_id: str
) -> run_service_pb2.ReportStatusRequest:
    """Build a ReportStatusRequest."""
    return run_service_pb2.ReportStatusRequest(patch=patch, batch_id=batch_id)


def watched_snapshots(
    response: run_service_pb2.WatchRunResponse,
) -> tuple[ledger_pb2.RunSnapshot]:
    """Unpack one WatchRun message."""
    return (response.snapshot,)


def watched_runs(response: run_service_pb2.WatchRunsResponse) -> tuple[run_service_pb2.RunSummary]:
    """Unpack one WatchRuns message."""
    return (response.run,)


def tailed_lines(response: run_service_pb2.TailLogsResponse) -> Iterable[ledger_pb2.LogLine]:
    """Unpack one TailLogs message: its batch of lines, flattened by the caller."""
    return response.lines


def start_run_result(response: run_service_pb2.StartRunResponse) -> StartRunResult:
    """Shape a StartRunResponse."""
    return StartRunResult(snapshot=response.run, created=response.created)


def list_runs_page(response: run_service_pb2.ListRunsResponse) -> ListRunsPage:
    """Shape a ListRunsResponse."""
    return ListRunsPage(runs=list(response.runs), next_page_token=response.next_page_token)


def events_page(response: run_service_pb2.GetEventsResponse) -> EventsPage:
    """Shape a GetEventsResponse."""
    return EventsPage(events=list(response.events), has_more=response.has_more)


def next_page_token(page: ListRunsPage, page_token: str) -> str | None:
    """Return the token of the page after ``page``, or None when it was the last.

    Raises:
        LedgerflowError: If the coordinator handed back the token it was given, which
            would make a paging loop spin forever.
    """
    if not page.next_page_token:
        return None
    if page.next_page_token == page_token:
        raise LedgerflowError("ListRuns returned the same page token again")
    return page.next_page_token


def next_after_seq(page: EventsPage) -> int | None:
    """Return the ``after_seq`` that continues after ``page``, or None when it was the last.

    Raises:
        LedgerflowError: If the coordinator said more events exist but sent none, which
            would make a paging loop spin forever.
    """
    if not page.has_more:
        return None
    if not page.events:
        raise LedgerflowError("GetEvents said has_more on an empty page")
    return page.events[-1].seq


# --- starting runs and waiting for them (RunHandle, SyncRunHandle) -------------------------


@dataclass(frozen=True, slots=True)
class WorkflowTarget:
    """What ``start`` resolved its ``workflow`` argument to.

    Attributes:
        name: The workflow name to send.
        version: The workflow version to send; empty takes any.
        result_type: The type hint ``result()`` decodes into by default (None: plain JSON).
    """

    name: str
    version: str
    result_type: Any


def workflow_target(
    workflow: str | WorkflowDefinition[Any, Any], version: str | None
) -> WorkflowTarget:
    """Resolve a workflow name or definition, and an explicit version, for StartRun.

    Args:
        workflow: A registered name, or a definition made by ``@workflow.defn``.
        version: Overrides the definition's version; None keeps it (empty for a name).

    Returns:
        The name, the version and the definition's return type.

    Raises:
        InvalidArgumentError: If ``workflow`` is neither.
    """
    if isinstance(workflow, WorkflowDefinition):
        pinned = workflow.version if version is None else version
        return WorkflowTarget(workflow.name, pinned, workflow.output_type)
    if isinstance(workflow, str):
        return WorkflowTarget(workflow, version or "", None)
    raise InvalidArgumentError(
        "workflow",
        f"expected a workflow name or a @workflow.defn definition, got {type(workflow).__name__}",
    )


class _HandleResultType:
    def __repr__(self) -> str:
        return "<the handle's result type>"


HANDLE_RESULT_TYPE: Any = _HandleResultType()
"""``result()``'s default ``result_type``: the handle's own (None already means plain JSON)."""

_ENDED_ERRORS: dict[ledger_pb2.RunStatus.ValueType, type[RunEndedError]] = {
    ledger_pb2.RUN_STATUS_FAILED: RunFailedError,
    ledger_pb2.RUN_STATUS_CANCELLED: RunCancelledError,
    ledger_pb2.RUN_STATUS_TIMED_OUT: RunTimedOutError,
    ledger_pb2.RUN_STATUS_TERMINATED: RunTerminatedError,
}


def run_result(snapshot: ledger_pb2.RunSnapshot, result_type: Any) -> Any:
    """Return a terminal run's decoded result, or raise the error its status stands for.

    Args:
        snapshot: The run's terminal snapshot.
        result_type: The type to decode a completed run's result into: a dataclass, a
            pydantic model, ``list[X]``..., None for plain JSON, or ``Payload`` for the
            payload as stored (custom codecs).

    Returns:
        The result; None when the run completed without one.

    Raises:
        RunEndedError: The run did not complete (the subclass names its status).
        LedgerflowError: The result does not decode as ``result_type``.
    """
    if snapshot.status != ledger_pb2.RUN_STATUS_COMPLETED:
        raise _ENDED_ERRORS.get(snapshot.status, RunEndedError)(snapshot)
    stored = snapshot.result if snapshot.HasField("result") else None
    if result_type is common_pb2.Payload:
        return stored if stored is not None else common_pb2.Payload()
    try:
        return decode(stored, result_type)
    except (TypeError, ValueError, KeyError) as err:
        shown = getattr(result_type, "__name__", repr(result_type))
        raise LedgerflowError(
            f"run {snapshot.run_id}: its result does not decode as {shown}: {err}"
        ) from err


@dataclass(slots=True)
class Reconnect:
    """When a handle's watch resumes after its stream ended early, and when it gives up.

    A coordinator that shuts down ends WatchRun streams cleanly, before the run's
    end; one that is restarting cannot be reached for a while. Either way the watch
    resumes from the last snapshot it saw, waiting a little longer each time
    (exponential, capped) so a coordinator that keeps closing streams is not hammered.
    It gives up, raising the connection error, only once the coordinator has been
    unreachable for ``give_up_after`` seconds without a call succeeding in between:
    long enough for a restart, short enough that a wrong address is reported.

    Attributes:
        first_delay: Seconds before the first retry.
        max_delay: The cap on the delay between retries.
        give_up_after: Seconds of continuous failure after which the error is raised.
    """

    first_delay: float = 0.05
    max_delay: float = 2.0
    give_up_after: float = 60.0
    _delay: float = 0.0
    _failing_since: float | None = None

    def received(self) -> None:
        """A snapshot arrived: the next interruption retries at once-ish again."""
        self._delay = 0.0
        self._failing_since = None

    def succeeded(self) -> None:
        """A call succeeded: the coordinator is reachable, whatever the stream did."""
        self._failing_since = None

    def delay(self, now: float, error: CoordinatorUnavailableError | None = None) -> float:
        """Return the seconds to wait before resuming.

        Args:
            now: The current monotonic time.
            error: The connection error that interrupted the watch; None when its
                stream ended cleanly.

        Returns:
            The delay.

        Raises:
            CoordinatorUnavailableError: ``error``, once the coordinator has been
                unreachable for ``give_up_after`` seconds.
        """
        if error is not None:
            if self._failing_since is None:
                self._failing_since = now
            elif now - self._failing_since >= self.give_up_after:
                raise error
        self._delay = min(self.max_delay, max(self.first_delay, self._delay * 2))
        return self._delay

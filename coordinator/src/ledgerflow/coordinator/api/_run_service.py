"""RunService: the client API, implemented over the store and the hub.

This is the gRPC edge: it validates requests (errors name the field), enforces
the size limits and namespaces, and shapes responses. Handlers raise domain errors;
:class:`DomainErrorInterceptor` turns them into status codes. Nothing here
touches SQL.

Namespaces: a caller whose token is confined to a namespace (``api._auth``) sees
the runs of other namespaces as if they did not exist. Reads check the snapshot's
namespace here; writes pass the namespace to the store, which checks it under the
run's lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ledgerflow.coordinator.api._auth import confined_namespace, namespace_for
from ledgerflow.coordinator.api._tokens import PageTokens
from ledgerflow.coordinator.fanout import Hub
from ledgerflow.coordinator.store import (
    DEFAULT_NAMESPACE,
    RunFilter,
    StartRunSpec,
    Store,
    namespace_of,
)
from ledgerflow.errors import (
    InvalidArgumentError,
    PayloadTooLargeError,
    RunNotFoundError,
)
from ledgerflow.ledger import JSON_ENCODING, check_id, is_terminal, validate_event
from ledgerflow.ledger._time import to_nanos
from ledgerflow.ledger._validate import MAX_INT64, check_field_ranges
from ledgerflow.v1 import common_pb2, run_service_pb2_grpc
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb

_Context = grpc.aio.ServicerContext


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits.

    Attributes:
        max_payload_bytes: The largest payload (input, signal body, event) accepted.
        max_batch_events: The most events one AppendEvents may carry.
        max_page_size: The largest page a list or page request may ask for.
    """

    max_payload_bytes: int = 2 * 1024 * 1024
    max_batch_events: int = 10_000
    max_page_size: int = 1_000


def check_events(events: list[pb.LedgerEvent], limits: Limits) -> None:
    """Check producer events before anything is appended; errors name the field.

    Raises:
        InvalidArgumentError: An event is malformed (the field is named).
        PayloadTooLargeError: Too many events, or an event over the payload limit.
    """
    if not events:
        raise InvalidArgumentError("events", "must not be empty")
    if len(events) > limits.max_batch_events:
        raise PayloadTooLargeError(
            f"events: {len(events)} events exceed the limit of {limits.max_batch_events}"
        )
    for i, event in enumerate(events):
        where = f"events[{i}]"
        size = event.ByteSize()
        if size > limits.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{where}: {size} bytes exceeds the limit of {limits.max_payload_bytes}"
            )
        try:
            validate_event(event)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"{where}.{err.field}", err.problem) from err
        if event.seq:
            raise InvalidArgumentError(f"{where}.seq", "must be 0: the coordinator assigns seqs")
        log = event.log_appended
        if event.HasField("log_appended") and (
            log.HasField("first_seq") or log.dropped_line_count or log.logs_truncated
        ):
            raise InvalidArgumentError(
                f"{where}.log_appended",
                "first_seq, dropped_line_count and logs_truncated "
                "are set by ingestion, not by producers",
            )


def summary_of(snap: pb.RunSnapshot) -> rpb.RunSummary:
    """Return the list view of a snapshot."""
    out = rpb.RunSummary(
        run_id=snap.run_id,
        workflow_name=snap.workflow_name,
        status=snap.status,
        error_message=snap.error.message,
        last_seq=snap.last_seq,
        namespace=namespace_of(snap),
    )
    out.tags.extend(snap.tags)
    for name in ("create_time", "update_time", "finish_time"):
        if snap.HasField(name):
            getattr(out, name).CopyFrom(getattr(snap, name))
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _bound_nanos(ts: Timestamp) -> int:
    # Run times are int64 nanoseconds; a bound past them (a valid Timestamp after
    # 2262) selects the same runs as the int64 extreme and must not overflow the query.
    return max(-MAX_INT64 - 1, min(MAX_INT64, to_nanos(ts)))


def _filter_of(flt: rpb.RunFilter) -> RunFilter:
    for i, status in enumerate(flt.statuses):
        if status not in pb.RunStatus.values() or status == pb.RUN_STATUS_UNSPECIFIED:
            raise InvalidArgumentError(f"filter.statuses[{i}]", f"unknown run status {status}")
    if flt.workflow_name:
        check_id(flt.workflow_name, "filter.workflow_name")
    check_field_ranges(flt, "filter")
    return RunFilter(
        statuses=tuple(sorted(set(flt.statuses))),
        workflow_name=flt.workflow_name,
        namespace=namespace_for(flt.namespace, "filter.namespace") or "",
        created_after=_bound_nanos(flt.created_after) if flt.HasField("created_after") else None,
        created_before=(
            _bound_nanos(flt.created_before) if flt.HasField("created_before") else None
        ),
    )


def _matches(flt: RunFilter, snap: pb.RunSnapshot) -> bool:
    if flt.statuses and snap.status not in flt.statuses:
        return False
    if flt.workflow_name and snap.workflow_name != flt.workflow_name:
        return False
    if flt.namespace and namespace_of(snap) != flt.namespace:
        return False
    created = to_nanos(snap.create_time)
    if flt.created_after is not None and created < flt.created_after:
        return False
    return flt.created_before is None or created < flt.created_before


class RunService(run_service_pb2_grpc.RunServiceServicer):
    """The RunService implementation."""

    def __init__(self, store: Store, hub: Hub, tokens: PageTokens, limits: Limits) -> None:
        """Create the service.

        Args:
            store: Durable state.
            hub: In-process fan-out of committed changes.
            tokens: The page-token codec.
            limits: Request limits.
        """
        self._store = store
        self._hub = hub
        self._tokens = tokens
        self._limits = limits

    # -- validation helpers --------------------------------------------------

    @staticmethod
    def _visible(snapshot: pb.RunSnapshot) -> pb.RunSnapshot:
        """Return the snapshot if the caller may see its run; a hidden run is not found."""
        confined = confined_namespace()
        if confined is not None and namespace_of(snapshot) != confined:
            raise RunNotFoundError(f"run {snapshot.run_id!r} not found")
        return snapshot

    async def _get_visible(self, run_id: str) -> pb.RunSnapshot:
        return self._visible(await self._store.get_run(run_id))

    @staticmethod
    def _place_events(events: list[pb.LedgerEvent]) -> str | None:
        """Put the runs an AppendEvents creates in the caller's namespace; return it."""
        confined = confined_namespace()
        for i, event in enumerate(events):
            if not event.HasField("run_created"):
                continue
            created = event.run_created
            field = f"events[{i}].run_created.namespace"
            if created.namespace:
                namespace_for(created.namespace, field)
            elif confined is not None:
                created.namespace = confined
        return confined

    def _check_payload(self, payload: common_pb2.Payload, field: str) -> None:
        size = payload.ByteSize()
        if size > self._limits.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{field}: {size} bytes exceeds the limit of {self._limits.max_payload_bytes}"
            )
        if payload.encoding in ("", JSON_ENCODING) and payload.data:
            try:
                json.loads(payload.data, parse_constant=_reject_constant)
            except ValueError as err:
                raise InvalidArgumentError(field, f"is not valid JSON ({err})") from err
            except RecursionError as err:
                raise InvalidArgumentError(field, "is JSON nested too deeply") from err

    def _check_text(self, value: str, field: str) -> None:
        """Refuse free text (reasons, identities) larger than a payload may be."""
        if len(value) * 4 > self._limits.max_payload_bytes:  # cheap bound before encoding
            size = len(value.encode())
            if size > self._limits.max_payload_bytes:
                raise PayloadTooLargeError(
                    f"{field}: {size} bytes exceeds the limit of {self._limits.max_payload_bytes}"
                )

    def _page_size(self, value: int, default: int) -> int:
        if value < 0 or value > self._limits.max_page_size:
            raise InvalidArgumentError(
                "page_size", f"must be between 0 and {self._limits.max_page_size}"
            )
        return value or default

    @staticmethod
    def _non_negative(value: int, field: str) -> None:
        if value < 0:
            raise InvalidArgumentError(field, "must not be negative")

    # -- unary RPCs ------------------------------------------------------------

    async def StartRun(  # noqa: N802 - gRPC method name
        self,
        request: rpb.StartRunRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.StartRunResponse:
        """Create a run, or return the one an earlier identical request created."""
        check_id(request.workflow_name, "workflow_name")
        if request.run_id:
            check_id(request.run_id, "run_id")
        if request.idempotency_key:
            check_id(request.idempotency_key, "idempotency_key")
        for i, tag in enumerate(request.tags):
            check_id(tag, f"tags[{i}]")
        self._check_text(request.workflow_version, "workflow_version")
        namespace = namespace_for(request.namespace, "namespace") or DEFAULT_NAMESPACE
        if request.HasField("input"):
            self._check_payload(request.input, "input")
        if request.HasField("execution_timeout") and (
            request.execution_timeout.seconds < 0
            or request.execution_timeout.nanos < 0
            or request.execution_timeout.ToNanoseconds() == 0
        ):
            raise InvalidArgumentError("execution_timeout", "must be positive")
        # The deadline (now + timeout) is kept as int64 nanoseconds.
        if (
            request.HasField("execution_timeout")
            and request.execution_timeout.ToNanoseconds() > MAX_INT64 - time.time_ns()
        ):
            raise InvalidArgumentError(
                "execution_timeout", "is too long: the deadline must fall before the year 2262"
            )
        snapshot, created = await self._store.start_run(
            StartRunSpec(
                workflow_name=request.workflow_name,
                workflow_version=request.workflow_version,
                input=request.input if request.HasField("input") else None,
                run_id=request.run_id,
                idempotency_key=request.idempotency_key,
                tags=tuple(request.tags),
                execution_timeout=(
                    request.execution_timeout if request.HasField("execution_timeout") else None
                ),
                namespace=namespace,
            )
        )
        return rpb.StartRunResponse(run=snapshot, created=created)

    async def GetRun(  # noqa: N802
        self,
        request: rpb.GetRunRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.GetRunResponse:
        """Return a run's snapshot."""
        check_id(request.run_id, "run_id")
        snapshot = await self._get_visible(request.run_id)
        return rpb.GetRunResponse(run=snapshot)

    async def ListRuns(  # noqa: N802
        self,
        request: rpb.ListRunsRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.ListRunsResponse:
        """Return a page of runs, newest first."""
        flt = _filter_of(request.filter)
        size = self._page_size(request.page_size, 50)
        after = self._tokens.check(request.page_token, flt) if request.page_token else None
        rows = await self._store.list_runs(flt, size + 1, after)
        response = rpb.ListRunsResponse()
        for _, snap in rows[:size]:
            response.runs.append(summary_of(snap))
        if len(rows) > size:
            from ledgerflow.coordinator.store import PagePosition

            last_time, last = rows[size - 1]
            response.next_page_token = self._tokens.issue(
                flt, PagePosition(create_time=last_time, run_id=last.run_id)
            )
        return response

    async def CancelRun(  # noqa: N802
        self,
        request: rpb.CancelRunRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.CancelRunResponse:
        """Record a cancellation request."""
        check_id(request.run_id, "run_id")
        self._check_text(request.reason, "reason")
        self._check_text(request.identity, "identity")
        seq, already = await self._store.cancel_run(
            request.run_id,
            reason=request.reason,
            identity=request.identity,
            namespace=confined_namespace(),
        )
        return rpb.CancelRunResponse(seq=seq, already_requested=already)

    async def SignalRun(  # noqa: N802
        self,
        request: rpb.SignalRunRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.SignalRunResponse:
        """Put a signal in the run's inbox."""
        check_id(request.run_id, "run_id")
        check_id(request.signal_name, "signal_name")
        if request.request_id:
            check_id(request.request_id, "request_id")
        if request.HasField("payload"):
            self._check_payload(request.payload, "payload")
        self._check_text(request.identity, "identity")
        seq, duplicate = await self._store.signal_run(
            request.run_id,
            name=request.signal_name,
            payload=request.payload if request.HasField("payload") else None,
            request_id=request.request_id,
            identity=request.identity,
            namespace=confined_namespace(),
        )
        return rpb.SignalRunResponse(seq=seq, duplicate=duplicate)

    async def GetEvents(  # noqa: N802
        self,
        request: rpb.GetEventsRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.GetEventsResponse:
        """Return a page of a run's ledger."""
        check_id(request.run_id, "run_id")
        self._non_negative(request.after_seq, "after_seq")
        size = self._page_size(request.page_size, 100)
        if confined_namespace() is not None:
            await self._get_visible(request.run_id)
        page, more = await self._store.get_events(request.run_id, request.after_seq, size)
        response = rpb.GetEventsResponse(has_more=more)
        response.events.extend(page)
        return response

    async def AppendEvents(  # noqa: N802
        self,
        request: rpb.AppendEventsRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.AppendEventsResponse:
        """Append producer events in one transaction."""
        if request.batch_id:
            check_id(request.batch_id, "batch_id")
        events = list(request.events)
        check_events(events, self._limits)
        namespace = self._place_events(events)
        outcome = await self._store.append_events(
            events,
            request_id=f"batch:{request.batch_id}" if request.batch_id else "",
            namespace=namespace,
        )
        response = rpb.AppendEventsResponse(duplicate=outcome.duplicate)
        for run_id, (first, last) in outcome.ranges.items():
            response.ranges.add(run_id=run_id, first_seq=first, last_seq=last)
        return response

    async def ReportStatus(  # noqa: N802
        self,
        request: rpb.ReportStatusRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> rpb.ReportStatusResponse:
        """Turn a status patch into events and append them."""
        patch = request.patch
        check_id(patch.run_id, "patch.run_id")
        if request.batch_id:
            check_id(request.batch_id, "batch_id")
        if patch.HasField("result"):
            self._check_payload(patch.result, "patch.result")
        if patch.HasField("live_logs_channel_offset") and patch.live_logs_channel_offset < 0:
            raise InvalidArgumentError("patch.live_logs_channel_offset", "must not be negative")
        if patch.live_logs_channel_offset > MAX_INT64 - len(patch.live_logs):
            raise InvalidArgumentError(
                "patch.live_logs_channel_offset", "plus the number of lines overflows int64"
            )
        for i, line in enumerate(patch.live_logs):
            if "\x00" in line:
                raise InvalidArgumentError(
                    f"patch.live_logs[{i}]", "must not contain a NUL character"
                )
        check_field_ranges(patch, "patch")
        if patch.ByteSize() > self._limits.max_payload_bytes:
            raise PayloadTooLargeError(
                f"patch: {patch.ByteSize()} bytes exceeds the limit of "
                f"{self._limits.max_payload_bytes}"
            )
        outcome = await self._store.report_status(
            patch,
            request_id=f"status:{request.batch_id}" if request.batch_id else "",
            namespace=confined_namespace(),
        )
        response = rpb.ReportStatusResponse()
        response.events.extend(outcome.appended)
        return response

    # -- streams ---------------------------------------------------------------

    async def WatchRun(  # noqa: N802
        self,
        request: rpb.WatchRunRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> AsyncIterator[rpb.WatchRunResponse]:
        """Stream a run's snapshot: the current one, then each committed change.

        With ``skip_intermediate``, the current one and then only the terminal one.
        """
        check_id(request.run_id, "run_id")
        self._non_negative(request.after_seq, "after_seq")
        # Subscribe before reading, so no commit falls between the read and the watch.
        with self._hub.watch_run(request.run_id, terminal_only=request.skip_intermediate) as sub:
            # From the writer's cache when it has the run: no read (see Store.peek_run).
            cached = self._store.peek_run(request.run_id)
            if cached is None:
                snapshot = await self._get_visible(request.run_id)
            else:
                snapshot = self._visible(cached)
            last = request.after_seq
            while True:
                if snapshot.last_seq > last:
                    yield rpb.WatchRunResponse(snapshot=snapshot)
                    last = snapshot.last_seq
                if is_terminal(snapshot.status):
                    return
                following = await sub.next()
                if following is None:
                    return  # The coordinator is shutting down: end the stream cleanly.
                snapshot = following

    async def WatchRuns(  # noqa: N802
        self,
        request: rpb.WatchRunsRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> AsyncIterator[rpb.WatchRunsResponse]:
        """Stream changes to the runs a filter matches."""
        flt = _filter_of(request.filter)
        with self._hub.watch_runs(lambda s: _matches(flt, s)) as sub:
            if request.include_existing:
                after = None
                while True:
                    rows = await self._store.list_runs(flt, 500, None if after is None else after)
                    for _, snap in rows:
                        sub.offer(snap)
                    if len(rows) < 500:
                        break
                    from ledgerflow.coordinator.store import PagePosition

                    after = PagePosition(create_time=rows[-1][0], run_id=rows[-1][1].run_id)
            while True:
                snapshot = await sub.next()
                if snapshot is None:
                    return  # The coordinator is shutting down: end the stream cleanly.
                yield rpb.WatchRunsResponse(run=summary_of(snapshot))

    async def TailLogs(  # noqa: N802
        self,
        request: rpb.TailLogsRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> AsyncIterator[rpb.TailLogsResponse]:
        """Stream stored log lines from a seq; with follow, keep streaming until the run ends."""
        check_id(request.run_id, "run_id")
        self._non_negative(request.from_seq, "from_seq")
        next_seq = max(1, request.from_seq)
        with self._hub.watch_run(request.run_id) as sub:
            snapshot = await self._get_visible(request.run_id)
            while True:
                lines = await self._store.get_log_lines(request.run_id, next_seq, 500)
                if lines:
                    yield rpb.TailLogsResponse(lines=lines)
                    next_seq = lines[-1].seq + 1
                    continue
                # Caught up. Lines of a run are committed before its terminal status, so
                # a terminal snapshot read before this page means nothing more will come.
                if not request.follow or is_terminal(snapshot.status):
                    return
                following = await sub.next()
                if following is None:
                    return  # The coordinator is shutting down: end the stream cleanly.
                snapshot = following

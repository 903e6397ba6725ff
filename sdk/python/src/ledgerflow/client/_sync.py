"""The blocking client, for scripts and synchronous web handlers (Django, Flask)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import closing
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, overload

import grpc

from ledgerflow.client import _requests as rq
from ledgerflow.client._auth import bearer_metadata, channel_credentials
from ledgerflow.client._errors import from_rpc_error, unavailable
from ledgerflow.errors import CoordinatorUnavailableError, LedgerflowError, ResultTimeoutError
from ledgerflow.ledger import is_terminal
from ledgerflow.v1 import ledger_pb2, run_service_pb2, run_service_pb2_grpc
from ledgerflow.workflow import WorkflowDefinition

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_T = TypeVar("_T")
_In = TypeVar("_In")
_Out = TypeVar("_Out")
_OutT = TypeVar("_OutT", covariant=True)

_SETTLED = frozenset(
    {
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)


class SyncClient:
    """A blocking client of a ledgerflow coordinator: :class:`Client`'s API without ``await``.

    Methods take the same arguments, return the same types and raise the same
    :mod:`ledgerflow.errors` as :class:`Client`'s; see its docstrings. Streaming methods
    return iterators that cancel the call when closed (``break`` then garbage collection,
    or :func:`contextlib.closing`). A SyncClient may be shared by threads.

    ``SyncClient(address)`` connects on first use, so building one at import time (a
    Django settings module, a Flask app factory) never blocks; ``SyncClient.connect``
    checks the coordinator is reachable first.

    Args:
        address: The coordinator's ``host:port``.
        credentials: TLS credentials (custom root certificates, or a client certificate
            for mutual TLS); None for a plaintext channel unless ``tls``.
        token: A bearer token sent with every call (``authorization: Bearer`` metadata),
            for a coordinator started with ``--auth-tokens``; None sends none.
        tls: Connect over TLS verified against the system's root certificates (ignored
            when ``credentials`` is given).
        options: Extra grpc channel options.
        identity: Who this client is, recorded with cancellations and signals;
            empty means ``user@host``.
        rpc_timeout: Seconds a unary call may take; None means no deadline.
        namespace: The namespace runs start in and listings keep by default; None (or
            empty) leaves the choice to the coordinator (see :class:`Client`).
    """

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        identity: str = "",
        rpc_timeout: float | None = rq.DEFAULT_RPC_TIMEOUT,
        namespace: str | None = None,
        token: str | None = None,
        tls: bool = False,
    ) -> None:
        credentials = channel_credentials(credentials, tls)
        if credentials is None:
            channel = grpc.insecure_channel(address, options=list(options))
        else:
            channel = grpc.secure_channel(address, credentials, options=list(options))
        self._setup(channel, address, identity, rpc_timeout, token, namespace)

    def _setup(
        self,
        channel: grpc.Channel,
        address: str,
        identity: str,
        rpc_timeout: float | None,
        token: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self._metadata = bearer_metadata(token)
        self._namespace = namespace or None
        self._channel = channel
        self._stub = run_service_pb2_grpc.RunServiceStub(channel)
        self._address = address
        self._identity = identity or rq.default_identity()
        self._rpc_timeout = rpc_timeout

    @classmethod
    def from_channel(
        cls,
        channel: grpc.Channel,
        *,
        address: str = "",
        identity: str = "",
        rpc_timeout: float | None = rq.DEFAULT_RPC_TIMEOUT,
        namespace: str | None = None,
        token: str | None = None,
    ) -> Self:
        """Wrap a channel built elsewhere (interceptors, custom credentials, test fakes).

        The client takes the channel over: closing the client closes it.

        Args:
            channel: A channel to the coordinator.
            address: The address to name in errors.
            identity: As for the constructor.
            rpc_timeout: As for the constructor.
            namespace: As for the constructor.
            token: As for the constructor.

        Returns:
            The client.
        """
        client = cls.__new__(cls)
        client._setup(channel, address or "<channel>", identity, rpc_timeout, token, namespace)
        return client

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        connect_timeout: float | None = rq.DEFAULT_CONNECT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        identity: str = "",
        rpc_timeout: float | None = rq.DEFAULT_RPC_TIMEOUT,
        namespace: str | None = None,
        token: str | None = None,
        tls: bool = False,
    ) -> Self:
        """Connect to a coordinator and wait until the connection is up.

        Args:
            address: The coordinator's ``host:port``.
            connect_timeout: Seconds to wait for the connection; None returns at once.
            credentials: As for the constructor.
            options: As for the constructor.
            identity: As for the constructor.
            rpc_timeout: As for the constructor.
            namespace: As for the constructor.
            token: As for the constructor.
            tls: As for the constructor.

        Returns:
            The connected client.

        Raises:
            CoordinatorUnavailableError: If the connection failed or was not up in time.
        """
        client = cls(
            address,
            credentials=credentials,
            options=options,
            identity=identity,
            rpc_timeout=rpc_timeout,
            namespace=namespace,
            token=token,
            tls=tls,
        )
        if connect_timeout is not None:
            try:
                client._wait_ready(connect_timeout)
            except BaseException:
                client.close()
                raise
        return client

    def _wait_ready(self, connect_timeout: float) -> None:
        # As in Client: a refused connection fails at once rather than at the timeout.
        settled = threading.Event()
        states: list[grpc.ChannelConnectivity] = []

        def on_change(state: grpc.ChannelConnectivity) -> None:
            if state in _SETTLED:
                states.append(state)
                settled.set()

        self._channel.subscribe(on_change, try_to_connect=True)
        try:
            if not settled.wait(connect_timeout):
                raise unavailable(self._address, f"no connection within {connect_timeout:g}s")
        finally:
            self._channel.unsubscribe(on_change)
        if states[0] is not grpc.ChannelConnectivity.READY:
            raise unavailable(self._address, "connection failed")

    @property
    def address(self) -> str:
        """The coordinator's address."""
        return self._address

    @property
    def identity(self) -> str:
        """Who this client is, recorded with cancellations and signals."""
        return self._identity

    @property
    def namespace(self) -> str | None:
        """The namespace runs start in and listings keep; None leaves it to the coordinator."""
        return self._namespace

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._namespace is None:
            return f"SyncClient(address={self._address!r})"
        return f"SyncClient(address={self._address!r}, namespace={self._namespace!r})"

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        deadline: float | None = None,
    ) -> _Resp:
        # ``deadline`` (monotonic) shortens the call to fit a caller's own timeout.
        timeout = _until(deadline, self._rpc_timeout)
        try:
            return method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self._address) from err

    def _stream(
        self,
        method: grpc.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        items: Callable[[_Resp], Iterable[_T]],
        *,
        deadline: float | None = None,
    ) -> Generator[_T, None, None]:
        call = method(request, timeout=_until(deadline, None), metadata=self._metadata)
        try:
            for response in call:
                yield from items(response)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self._address) from err
        finally:
            # Stops the server-side stream when the caller stops early.
            call.cancel()

    def start_run(
        self,
        workflow_name: str,
        input: object = None,
        *,
        run_id: str = "",
        idempotency_key: str = "",
        tags: Iterable[str] = (),
        workflow_version: str = "",
        execution_timeout: timedelta | None = None,
        namespace: str | None = None,
    ) -> rq.StartRunResult:
        """Start a run, or return the existing one; see :meth:`Client.start_run`."""
        request = rq.start_run(
            workflow_name,
            input,
            run_id=run_id,
            idempotency_key=idempotency_key,
            tags=tags,
            workflow_version=workflow_version,
            execution_timeout=execution_timeout,
            namespace=rq.request_namespace(namespace, self._namespace),
        )
        return rq.start_run_result(self._call(self._stub.StartRun, request))

    @overload
    def start(
        self,
        workflow: WorkflowDefinition[_In, _Out],
        input: _In = ...,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | None = None,
        tags: Iterable[str] = (),
        execution_timeout: timedelta | None = None,
        namespace: str | None = None,
    ) -> SyncRunHandle[_Out]: ...
    @overload
    def start(
        self,
        workflow: str,
        input: object = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | None = None,
        tags: Iterable[str] = (),
        execution_timeout: timedelta | None = None,
        namespace: str | None = None,
    ) -> SyncRunHandle[Any]: ...
    def start(
        self,
        workflow: str | WorkflowDefinition[Any, Any],
        input: object = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | None = None,
        tags: Iterable[str] = (),
        execution_timeout: timedelta | None = None,
        namespace: str | None = None,
    ) -> SyncRunHandle[Any]:
        """Start a run of a workflow and return its handle; see :meth:`Client.start`."""
        target = rq.workflow_target(workflow, version)
        started = self.start_run(
            target.name,
            input,
            run_id=run_id or "",
            idempotency_key=idempotency_key or "",
            tags=tags,
            workflow_version=target.version,
            execution_timeout=execution_timeout,
            namespace=namespace,
        )
        return SyncRunHandle(
            self, started.run_id, created=started.created, result_type=target.result_type
        )

    def get_handle(self, run_id: str, *, result_type: Any = None) -> SyncRunHandle[Any]:
        """Return a handle to an existing run; see :meth:`Client.get_handle`."""
        return SyncRunHandle(self, run_id, result_type=result_type)

    def get_run(self, run_id: str) -> ledger_pb2.RunSnapshot:
        """Return a run's snapshot; see :meth:`Client.get_run`."""
        return self._call(self._stub.GetRun, rq.get_run(run_id)).run

    def _run_filter(
        self,
        statuses: Iterable[rq.RunStatusLike],
        workflow_name: str,
        created_after: datetime | None,
        created_before: datetime | None,
        namespace: str | None,
    ) -> run_service_pb2.RunFilter:
        """The filter of list_runs, iter_runs and watch_runs (the client's namespace by default)."""
        return rq.run_filter(
            statuses,
            workflow_name,
            created_after,
            created_before,
            rq.request_namespace(namespace, self._namespace),
        )

    def list_runs(
        self,
        *,
        statuses: Iterable[rq.RunStatusLike] = (),
        workflow_name: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        namespace: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> rq.ListRunsPage:
        """Return one page of runs, newest first; see :meth:`Client.list_runs`."""
        selected = self._run_filter(
            statuses, workflow_name, created_after, created_before, namespace
        )
        request = rq.list_runs(selected, page_size, page_token)
        return rq.list_runs_page(self._call(self._stub.ListRuns, request))

    def iter_runs(
        self,
        *,
        statuses: Iterable[rq.RunStatusLike] = (),
        workflow_name: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        namespace: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Generator[run_service_pb2.RunSummary, None, None]:
        """Iterate over every matching run across pages; see :meth:`Client.iter_runs`."""
        selected = self._run_filter(
            statuses, workflow_name, created_after, created_before, namespace
        )
        token: str | None = page_token
        while token is not None:
            request = rq.list_runs(selected, page_size, token)
            page = rq.list_runs_page(self._call(self._stub.ListRuns, request))
            yield from page.runs
            token = rq.next_page_token(page, token)

    def get_events(self, run_id: str, *, after_seq: int = 0, page_size: int = 0) -> rq.EventsPage:
        """Return one page of a run's ledger; see :meth:`Client.get_events`."""
        request = rq.get_events(run_id, after_seq, page_size)
        return rq.events_page(self._call(self._stub.GetEvents, request))

    def iter_events(
        self, run_id: str, after_seq: int = 0, *, page_size: int = 0
    ) -> Generator[ledger_pb2.LedgerEvent, None, None]:
        """Iterate over a run's ledger across pages; see :meth:`Client.iter_events`."""
        cursor: int | None = after_seq
        while cursor is not None:
            page = self.get_events(run_id, after_seq=cursor, page_size=page_size)
            yield from page.events
            cursor = rq.next_after_seq(page)

    def cancel_run(
        self, run_id: str, reason: str = "", identity: str = ""
    ) -> run_service_pb2.CancelRunResponse:
        """Ask for a run to be cancelled; see :meth:`Client.cancel_run`."""
        request = rq.cancel_run(run_id, reason, identity or self._identity)
        return self._call(self._stub.CancelRun, request)

    def signal_run(
        self,
        run_id: str,
        name: str,
        payload: object = None,
        *,
        request_id: str = "",
        identity: str = "",
    ) -> run_service_pb2.SignalRunResponse:
        """Send a signal to a run; see :meth:`Client.signal_run`."""
        request = rq.signal_run(
            run_id, name, payload, request_id=request_id, identity=identity or self._identity
        )
        return self._call(self._stub.SignalRun, request)

    def watch_run(
        self, run_id: str, *, after_seq: int = 0, skip_intermediate: bool = False
    ) -> Generator[ledger_pb2.RunSnapshot, None, None]:
        """Stream a run's snapshots until it ends; see :meth:`Client.watch_run`."""
        request = rq.watch_run(run_id, after_seq, skip_intermediate)
        return self._stream(self._stub.WatchRun, request, rq.watched_snapshots)

    def watch_runs(
        self,
        *,
        statuses: Iterable[rq.RunStatusLike] = (),
        workflow_name: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        namespace: str | None = None,
        include_existing: bool = False,
    ) -> Generator[run_service_pb2.RunSummary, None, None]:
        """Stream changes to matching runs; see :meth:`Client.watch_runs`."""
        selected = self._run_filter(
            statuses, workflow_name, created_after, created_before, namespace
        )
        request = rq.watch_runs(selected, include_existing)
        return self._stream(self._stub.WatchRuns, request, rq.watched_runs)

    def tail_logs(
        self, run_id: str, *, from_seq: int = 0, follow: bool = False
    ) -> Generator[ledger_pb2.LogLine, None, None]:
        """Stream a run's log lines; see :meth:`Client.tail_logs`."""
        request = rq.tail_logs(run_id, from_seq, follow)
        return self._stream(self._stub.TailLogs, request, rq.tailed_lines)

    def append_events(
        self, events: Iterable[ledger_pb2.LedgerEvent], *, batch_id: str = ""
    ) -> run_service_pb2.AppendEventsResponse:
        """Append producer events in one transaction; see :meth:`Client.append_events`."""
        return self._call(self._stub.AppendEvents, rq.append_events(events, batch_id))

    def report_status(
        self, patch: run_service_pb2.StatusPatch, *, batch_id: str = ""
    ) -> run_service_pb2.ReportStatusResponse:
        """Report a coarse status; see :meth:`Client.report_status`."""
        return self._call(self._stub.ReportStatus, rq.report_status(patch, batch_id))


def _until(deadline: float | None, cap: float | None) -> float | None:
    """Return the seconds left before ``deadline`` (monotonic), at most ``cap``."""
    if deadline is None:
        return cap
    left = max(0.0, deadline - time.monotonic())
    return left if cap is None else min(left, cap)


class SyncRunHandle(Generic[_OutT]):
    """One run on a coordinator, blocking: :class:`RunHandle`'s API without ``await``.

    Get one from :meth:`SyncClient.start` or :meth:`SyncClient.get_handle`. Methods
    take the same arguments and raise the same errors as :class:`RunHandle`'s; see
    its docstrings. A handle may be shared by threads.

    Args:
        client: The client the handle calls through.
        run_id: The run.
        created: Whether the call that made the handle created the run.
        result_type: The type :meth:`result` decodes into by default.
    """

    def __init__(
        self, client: SyncClient, run_id: str, *, created: bool = False, result_type: Any = None
    ) -> None:
        self._client = client
        self._run_id = run_id
        self._created = created
        self._result_type = result_type

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run_id

    @property
    def created(self) -> bool:
        """Whether ``start`` created the run (False: it returned an existing one)."""
        return self._created

    @property
    def client(self) -> SyncClient:
        """The client the handle calls through."""
        return self._client

    def __repr__(self) -> str:
        return f"SyncRunHandle(run_id={self._run_id!r}, created={self._created})"

    @overload
    def result(self, *, timeout: float | None = None) -> _OutT: ...
    @overload
    def result(self, *, timeout: float | None = None, result_type: type[_T]) -> _T: ...
    def result(
        self, *, timeout: float | None = None, result_type: Any = rq.HANDLE_RESULT_TYPE
    ) -> Any:
        """Block until the run ends; return its result; see :meth:`RunHandle.result`."""
        hint = self._result_type if result_type is rq.HANDLE_RESULT_TYPE else result_type
        final: ledger_pb2.RunSnapshot | None = None
        # Only the first snapshot (for ResultTimeoutError) and the last one matter.
        with closing(self._watch(0, timeout, skip_intermediate=True)) as snapshots:
            for final in snapshots:  # noqa: B007 - the last one is the outcome
                pass
        if final is None or not is_terminal(final.status):  # _watch only ends at the end
            raise LedgerflowError(f"run {self._run_id}: the watch ended before the run did")
        return rq.run_result(final, hint)

    def watch(self, *, after_seq: int = 0) -> Generator[ledger_pb2.RunSnapshot, None, None]:
        """Stream the run's snapshots until it ends, resuming after coordinator restarts.

        See :meth:`RunHandle.watch`; close it early with :func:`contextlib.closing`.
        """
        return self._watch(after_seq, None)

    def _watch(
        self, after_seq: int, timeout: float | None, *, skip_intermediate: bool = False
    ) -> Generator[ledger_pb2.RunSnapshot, None, None]:
        # The same loop as RunHandle._watch. A timeout bounds every call and wait, and
        # its expiry (a DEADLINE_EXCEEDED, which the client reports as unavailable)
        # becomes ResultTimeoutError.
        deadline = None if timeout is None else time.monotonic() + timeout

        def expired(within: float) -> bool:
            return deadline is not None and time.monotonic() + within >= deadline

        client = self._client
        last = after_seq
        latest: ledger_pb2.RunSnapshot | None = None
        reconnect = rq.Reconnect()
        while True:
            try:
                request = rq.watch_run(self._run_id, last, skip_intermediate)
                stream = client._stream(
                    client._stub.WatchRun, request, rq.watched_snapshots, deadline=deadline
                )
                with closing(stream):
                    for snapshot in stream:
                        reconnect.received()
                        last, latest = snapshot.last_seq, snapshot
                        yield snapshot
                        if is_terminal(snapshot.status):
                            return
                # The stream ended early, or at once for a run that had already ended by
                # ``after_seq``: only the snapshot tells which.
                snapshot = client._call(
                    client._stub.GetRun, rq.get_run(self._run_id), deadline=deadline
                ).run
                reconnect.succeeded()
                if is_terminal(snapshot.status):
                    if snapshot.last_seq > last:
                        yield snapshot
                    return
                delay = reconnect.delay(time.monotonic())
            except CoordinatorUnavailableError as err:
                if timeout is not None and deadline is not None and time.monotonic() >= deadline:
                    raise ResultTimeoutError(self._run_id, timeout, latest) from err
                delay = reconnect.delay(time.monotonic(), err)
            if (
                timeout is not None
                and deadline is not None
                and time.monotonic() + delay >= deadline
            ):
                raise ResultTimeoutError(self._run_id, timeout, latest)
            time.sleep(delay)

    def describe(self) -> ledger_pb2.RunSnapshot:
        """Return the run's current snapshot; see :meth:`RunHandle.describe`."""
        return self._client.get_run(self._run_id)

    def cancel(self, reason: str = "", *, identity: str = "") -> run_service_pb2.CancelRunResponse:
        """Ask for the run to be cancelled; see :meth:`RunHandle.cancel`."""
        return self._client.cancel_run(self._run_id, reason, identity)

    def signal(
        self, name: str, payload: object = None, *, request_id: str = "", identity: str = ""
    ) -> run_service_pb2.SignalRunResponse:
        """Send a signal to the run; see :meth:`RunHandle.signal`."""
        return self._client.signal_run(
            self._run_id, name, payload, request_id=request_id, identity=identity
        )

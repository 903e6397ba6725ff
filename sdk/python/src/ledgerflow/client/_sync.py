"""The blocking client, for scripts and synchronous web handlers (Django, Flask)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from ledgerflow.client import _requests as rq
from ledgerflow.client._errors import from_rpc_error, unavailable
from ledgerflow.v1 import ledger_pb2, run_service_pb2, run_service_pb2_grpc

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_T = TypeVar("_T")

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
        credentials: TLS credentials; None for a plaintext channel.
        options: Extra grpc channel options.
        identity: Who this client is, recorded with cancellations and signals;
            empty means ``user@host``.
        rpc_timeout: Seconds a unary call may take; None means no deadline.
    """

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        identity: str = "",
        rpc_timeout: float | None = rq.DEFAULT_RPC_TIMEOUT,
    ) -> None:
        if credentials is None:
            channel = grpc.insecure_channel(address, options=list(options))
        else:
            channel = grpc.secure_channel(address, credentials, options=list(options))
        self._setup(channel, address, identity, rpc_timeout)

    def _setup(
        self, channel: grpc.Channel, address: str, identity: str, rpc_timeout: float | None
    ) -> None:
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
    ) -> Self:
        """Wrap a channel built elsewhere (interceptors, custom credentials, test fakes).

        The client takes the channel over: closing the client closes it.

        Args:
            channel: A channel to the coordinator.
            address: The address to name in errors.
            identity: As for the constructor.
            rpc_timeout: As for the constructor.

        Returns:
            The client.
        """
        client = cls.__new__(cls)
        client._setup(channel, address or "<channel>", identity, rpc_timeout)
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
    ) -> Self:
        """Connect to a coordinator and wait until the connection is up.

        Args:
            address: The coordinator's ``host:port``.
            connect_timeout: Seconds to wait for the connection; None returns at once.
            credentials: As for the constructor.
            options: As for the constructor.
            identity: As for the constructor.
            rpc_timeout: As for the constructor.

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
        return f"SyncClient(address={self._address!r})"

    def _call(self, method: grpc.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        try:
            return method(request, timeout=self._rpc_timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self._address) from err

    def _stream(
        self,
        method: grpc.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        items: Callable[[_Resp], Iterable[_T]],
    ) -> Generator[_T, None, None]:
        call = method(request)
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
        )
        return rq.start_run_result(self._call(self._stub.StartRun, request))

    def get_run(self, run_id: str) -> ledger_pb2.RunSnapshot:
        """Return a run's snapshot; see :meth:`Client.get_run`."""
        return self._call(self._stub.GetRun, rq.get_run(run_id)).run

    def list_runs(
        self,
        *,
        statuses: Iterable[rq.RunStatusLike] = (),
        workflow_name: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> rq.ListRunsPage:
        """Return one page of runs, newest first; see :meth:`Client.list_runs`."""
        selected = rq.run_filter(statuses, workflow_name, created_after, created_before)
        request = rq.list_runs(selected, page_size, page_token)
        return rq.list_runs_page(self._call(self._stub.ListRuns, request))

    def iter_runs(
        self,
        *,
        statuses: Iterable[rq.RunStatusLike] = (),
        workflow_name: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Generator[run_service_pb2.RunSummary, None, None]:
        """Iterate over every matching run across pages; see :meth:`Client.iter_runs`."""
        selected = rq.run_filter(statuses, workflow_name, created_after, created_before)
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
        self, run_id: str, *, after_seq: int = 0
    ) -> Generator[ledger_pb2.RunSnapshot, None, None]:
        """Stream a run's snapshots until it ends; see :meth:`Client.watch_run`."""
        request = rq.watch_run(run_id, after_seq)
        return self._stream(self._stub.WatchRun, request, rq.watched_snapshots)

    def watch_runs(
        self,
        *,
        statuses: Iterable[rq.RunStatusLike] = (),
        workflow_name: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        include_existing: bool = False,
    ) -> Generator[run_service_pb2.RunSummary, None, None]:
        """Stream changes to matching runs; see :meth:`Client.watch_runs`."""
        selected = rq.run_filter(statuses, workflow_name, created_after, created_before)
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

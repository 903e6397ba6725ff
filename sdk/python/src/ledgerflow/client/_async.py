"""The asyncio client: every RunService call, typed, over one ``grpc.aio`` channel.

:class:`RunHandle` is the run-level API on top (``start`` returns one): wait for the
result, watch, signal, cancel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import aclosing
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, overload

import grpc
from grpc import aio

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


class Client:
    """An asyncio client of a ledgerflow coordinator.

    Every method raises :mod:`ledgerflow.errors` types, never ``grpc.RpcError``:
    ``InvalidArgumentError`` (with ``field`` split off when the coordinator names one),
    ``RunNotFoundError``, ``RunAlreadyExistsError``, ``FailedPreconditionError``,
    ``PayloadTooLargeError``, ``PermissionDeniedError`` (the token does not allow the
    call), ``CoordinatorUnavailableError`` (unreachable, or no answer within
    ``rpc_timeout``), and ``LedgerflowError`` for any other status.

    Streaming and paging methods return async generators: a stream starts on first
    iteration and is cancelled when the generator closes. To stop one early without
    waiting for garbage collection, close it: ``async with aclosing(client.watch_run(id))
    as snapshots:`` (:func:`contextlib.aclosing`).

    Create one with ``await Client.connect(address)`` (checks the coordinator is reachable)
    or ``Client(address)`` (connects on first use), inside the event loop that will use
    it; close it with ``await client.close()`` or ``async with``.

    A client may act in one namespace (``namespace="billing"``): its runs start there,
    and listings and ``watch_runs`` keep that namespace's runs, unless a call names
    another. Without one, the coordinator decides: the token's namespace when the token
    is confined to one, else ``"default"`` for new runs and every namespace for
    listings. A run is found by its id (``get_run``, handles, cancel, signal) whatever
    the client's namespace: run ids are unique across namespaces, and a confined token
    is answered ``RunNotFoundError`` for another namespace's run.

    Args:
        address: The coordinator's ``host:port``.
        credentials: TLS credentials (custom root certificates, or a client certificate
            for mutual TLS); None for a plaintext channel unless ``tls``.
        token: A bearer token sent with every call (``authorization: Bearer`` metadata),
            for a coordinator started with ``--auth-tokens``; None sends none.
        tls: Connect over TLS verified against the system's root certificates (ignored
            when ``credentials`` is given).
        options: Extra grpc channel options, e.g. ``("grpc.keepalive_time_ms", 30000)``.
        identity: Who this client is, recorded with cancellations and signals;
            empty means ``user@host``.
        rpc_timeout: Seconds a unary call may take; None means no deadline. Streams
            never have one.
        namespace: The namespace runs start in and listings keep by default (lowercase
            letters, digits, ``_`` and ``-``); None (or empty) names none, leaving the
            choice to the coordinator. A token confined to another namespace is refused
            with ``PermissionDeniedError``.
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
            channel = aio.insecure_channel(address, options=list(options))
        else:
            channel = aio.secure_channel(address, credentials, options=list(options))
        self._setup(channel, address, identity, rpc_timeout, token, namespace)

    def _setup(
        self,
        channel: aio.Channel,
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
        channel: aio.Channel,
        *,
        address: str = "",
        identity: str = "",
        rpc_timeout: float | None = rq.DEFAULT_RPC_TIMEOUT,
        namespace: str | None = None,
        token: str | None = None,
    ) -> Self:
        """Wrap a channel built elsewhere (interceptors, custom credentials).

        The client takes the channel over: closing the client closes it.

        Args:
            channel: An asyncio channel to the coordinator.
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
    async def connect(
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
            connect_timeout: Seconds to wait for the connection; None returns at once and
                connects on first use.
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
                await client._wait_ready(connect_timeout)
            except BaseException:
                await client.close()
                raise
        return client

    async def _wait_ready(self, connect_timeout: float) -> None:
        # A refused connection fails at once instead of waiting out the timeout: grpc
        # would keep retrying with backoff, and a caller asking to connect wants to know.
        try:
            async with asyncio.timeout(connect_timeout):
                state = self._channel.get_state(try_to_connect=True)
                while state is not grpc.ChannelConnectivity.READY:
                    if state in (
                        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                        grpc.ChannelConnectivity.SHUTDOWN,
                    ):
                        raise unavailable(self._address, "connection failed")
                    await self._channel.wait_for_state_change(state)
                    state = self._channel.get_state(try_to_connect=True)
        except TimeoutError as err:
            raise unavailable(self._address, f"no connection within {connect_timeout:g}s") from err

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

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        if self._namespace is None:
            return f"Client(address={self._address!r})"
        return f"Client(address={self._address!r}, namespace={self._namespace!r})"

    async def _call(self, method: aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        try:
            return await method(request, timeout=self._rpc_timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self._address) from err

    async def _stream(
        self,
        method: aio.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        items: Callable[[_Resp], Iterable[_T]],
    ) -> AsyncGenerator[_T, None]:
        call = method(request, metadata=self._metadata)
        try:
            async for response in call:
                for item in items(response):
                    yield item
        except grpc.RpcError as err:
            raise from_rpc_error(err, self._address) from err
        finally:
            # Stops the server-side stream when the caller stops early (break, aclose).
            call.cancel()

    async def start_run(
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
        """Start a run, or return the existing one for a repeated run id or idempotency key.

        Args:
            workflow_name: The registered workflow to run.
            input: The workflow's input: any JSON value (``None`` is sent as null), or a
                ``Payload`` already encoded.
            run_id: A client-chosen run id; empty lets the coordinator choose.
            idempotency_key: Makes retries return the first run started with it (keys
                are per namespace).
            tags: Labels for the run.
            workflow_version: Pins a workflow version; empty takes any.
            execution_timeout: Bounds the run's whole life; None means no limit.
            namespace: The namespace to start the run in; None means the client's, and
                empty names none (the token's namespace, else ``"default"``).

        Returns:
            The run's snapshot and whether this call created it.

        Raises:
            InvalidArgumentError: The input is not JSON-encodable, or the coordinator
                refused a field.
            RunAlreadyExistsError: ``run_id`` exists for another workflow.
            PayloadTooLargeError: The input exceeds the coordinator's limit.
            PermissionDeniedError: The token is confined to another namespace.
        """
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
        return rq.start_run_result(await self._call(self._stub.StartRun, request))

    @overload
    async def start(
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
    ) -> RunHandle[_Out]: ...
    @overload
    async def start(
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
    ) -> RunHandle[Any]: ...
    async def start(
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
    ) -> RunHandle[Any]:
        """Start a run of a workflow and return its handle.

        Retrying is safe with a ``run_id`` or an ``idempotency_key``: a repeated start
        returns the first run, with ``handle.created`` False.

        Args:
            workflow: The workflow's registered name, or its ``@workflow.defn``
                definition (its name and version are sent, and ``result()`` decodes
                into its return type).
            input: The workflow's input, converted as the workflow engine converts
                values: JSON values, dataclasses, pydantic models, enums, datetimes,
                UUIDs; a ``Payload`` is sent as is.
            run_id: A client-chosen run id; None lets the coordinator choose.
            idempotency_key: Makes retries return the first run started with it.
            version: Pins a workflow version, overriding the definition's; None keeps
                the definition's (a name alone takes any version).
            tags: Labels for the run.
            execution_timeout: Bounds the run's whole life; None means no limit.
            namespace: The namespace to start the run in; None means the client's (see
                :meth:`start_run`).

        Returns:
            The run's handle.

        Raises:
            InvalidArgumentError: The input has no JSON form, or the coordinator refused
                a field (``field`` names it).
            RunAlreadyExistsError: ``run_id`` exists for another workflow.
            PayloadTooLargeError: The input exceeds the coordinator's limit.
            PermissionDeniedError: The token is confined to another namespace.
        """
        target = rq.workflow_target(workflow, version)
        started = await self.start_run(
            target.name,
            input,
            run_id=run_id or "",
            idempotency_key=idempotency_key or "",
            tags=tags,
            workflow_version=target.version,
            execution_timeout=execution_timeout,
            namespace=namespace,
        )
        return RunHandle(
            self, started.run_id, created=started.created, result_type=target.result_type
        )

    def get_handle(self, run_id: str, *, result_type: Any = None) -> RunHandle[Any]:
        """Return a handle to an existing run; no call is made until it is used.

        Args:
            run_id: The run.
            result_type: The type ``result()`` decodes a completed run's result into;
                None returns plain JSON.

        Returns:
            The handle (``created`` is False).
        """
        return RunHandle(self, run_id, result_type=result_type)

    async def get_run(self, run_id: str) -> ledger_pb2.RunSnapshot:
        """Return a run's snapshot.

        Raises:
            RunNotFoundError: No run has that id.
        """
        return (await self._call(self._stub.GetRun, rq.get_run(run_id))).run

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

    async def list_runs(
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
        """Return one page of runs, newest first.

        Args:
            statuses: Keep runs in any of these statuses (values, names or short names
                like ``"running"``); empty keeps all.
            workflow_name: Keep runs of this workflow; empty keeps all.
            created_after: Keep runs created at or after this aware datetime.
            created_before: Keep runs created before this aware datetime.
            namespace: Keep runs of this namespace; None means the client's, and empty
                names none (the token's namespace, else every namespace).
            page_size: Runs per page; 0 lets the coordinator choose (50).
            page_token: ``next_page_token`` of the previous page; empty starts over.

        Returns:
            The page.

        Raises:
            InvalidArgumentError: Unknown status, naive datetime, bad namespace, page
                token or size.
            PermissionDeniedError: The token is confined to another namespace.
        """
        selected = self._run_filter(
            statuses, workflow_name, created_after, created_before, namespace
        )
        request = rq.list_runs(selected, page_size, page_token)
        return rq.list_runs_page(await self._call(self._stub.ListRuns, request))

    async def iter_runs(
        self,
        *,
        statuses: Iterable[rq.RunStatusLike] = (),
        workflow_name: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        namespace: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> AsyncGenerator[run_service_pb2.RunSummary, None]:
        """Iterate over every matching run, newest first, fetching pages as needed.

        Takes the arguments of :meth:`list_runs`; ``page_token`` resumes a listing.
        """
        selected = self._run_filter(
            statuses, workflow_name, created_after, created_before, namespace
        )
        token: str | None = page_token
        while token is not None:
            request = rq.list_runs(selected, page_size, token)
            page = rq.list_runs_page(await self._call(self._stub.ListRuns, request))
            for run in page.runs:
                yield run
            token = rq.next_page_token(page, token)

    async def get_events(
        self, run_id: str, *, after_seq: int = 0, page_size: int = 0
    ) -> rq.EventsPage:
        """Return one page of a run's ledger.

        Args:
            run_id: The run to read.
            after_seq: Return events with a greater seq; 0 starts at the first event.
            page_size: Events per page; 0 lets the coordinator choose (100).

        Returns:
            The page; when ``has_more``, continue with ``after_seq`` = the last event's seq.

        Raises:
            RunNotFoundError: No run has that id.
            InvalidArgumentError: A negative seq or a bad page size.
        """
        request = rq.get_events(run_id, after_seq, page_size)
        return rq.events_page(await self._call(self._stub.GetEvents, request))

    async def iter_events(
        self, run_id: str, after_seq: int = 0, *, page_size: int = 0
    ) -> AsyncGenerator[ledger_pb2.LedgerEvent, None]:
        """Iterate over a run's ledger after ``after_seq``, fetching pages as needed.

        Ends at the last event committed when its page was read; use :meth:`watch_run`
        to follow a live run.
        """
        cursor: int | None = after_seq
        while cursor is not None:
            page = await self.get_events(run_id, after_seq=cursor, page_size=page_size)
            for event in page.events:
                yield event
            cursor = rq.next_after_seq(page)

    async def cancel_run(
        self, run_id: str, reason: str = "", identity: str = ""
    ) -> run_service_pb2.CancelRunResponse:
        """Ask for a run to be cancelled; a repeated request is acknowledged, not repeated.

        Args:
            run_id: The run to cancel.
            reason: Recorded in the ledger.
            identity: Who asks; empty means this client's identity.

        Returns:
            The cancel_requested event's seq and whether it was already requested.

        Raises:
            RunNotFoundError: No run has that id.
            FailedPreconditionError: The run has finished.
        """
        request = rq.cancel_run(run_id, reason, identity or self._identity)
        return await self._call(self._stub.CancelRun, request)

    async def signal_run(
        self,
        run_id: str,
        name: str,
        payload: object = None,
        *,
        request_id: str = "",
        identity: str = "",
    ) -> run_service_pb2.SignalRunResponse:
        """Send a signal to a run.

        Args:
            run_id: The run to signal.
            name: The signal's name.
            payload: The signal's body: any JSON value, or a ``Payload`` already encoded.
            request_id: Deduplicates retried sends; empty means no deduplication.
            identity: Who sends; empty means this client's identity.

        Returns:
            The signal event's seq and whether ``request_id`` was already used.

        Raises:
            RunNotFoundError: No run has that id.
            FailedPreconditionError: The run has finished.
            PayloadTooLargeError: The payload exceeds the coordinator's limit.
            InvalidArgumentError: The payload is not JSON-encodable, or a field was refused.
        """
        request = rq.signal_run(
            run_id, name, payload, request_id=request_id, identity=identity or self._identity
        )
        return await self._call(self._stub.SignalRun, request)

    def watch_run(
        self, run_id: str, *, after_seq: int = 0, skip_intermediate: bool = False
    ) -> AsyncGenerator[ledger_pb2.RunSnapshot, None]:
        """Stream a run's snapshot: the current one, then one per change.

        The coordinator keeps no backlog per subscriber: once a reader falls behind by
        more than the connection's flow-control window, it is sent the latest snapshot
        and skips intermediate ones; within the window (a dozen small snapshots) it gets
        each, late. The stream ends after the run's terminal snapshot, which is never
        skipped.

        Args:
            run_id: The run to watch.
            after_seq: Resume: skip the first snapshot unless the run changed after this
                seq (pass the ``last_seq`` of the last snapshot seen).
            skip_intermediate: Send the first snapshot and then only the terminal one
                (what waiting for the result needs: two messages per run, not one per
                change).

        Returns:
            The snapshots; iterating raises ``RunNotFoundError`` for an unknown run.
        """
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
    ) -> AsyncGenerator[run_service_pb2.RunSummary, None]:
        """Stream changes to the runs matching a filter (the filter of :meth:`list_runs`).

        Args:
            statuses: As for :meth:`list_runs`.
            workflow_name: As for :meth:`list_runs`.
            created_after: As for :meth:`list_runs`.
            created_before: As for :meth:`list_runs`.
            namespace: As for :meth:`list_runs`.
            include_existing: Send every matching run once before the changes.

        Returns:
            A run summary per change.
        """
        selected = self._run_filter(
            statuses, workflow_name, created_after, created_before, namespace
        )
        request = rq.watch_runs(selected, include_existing)
        return self._stream(self._stub.WatchRuns, request, rq.watched_runs)

    def tail_logs(
        self, run_id: str, *, from_seq: int = 0, follow: bool = False
    ) -> AsyncGenerator[ledger_pb2.LogLine, None]:
        """Stream a run's stored log lines, one at a time.

        Args:
            run_id: The run whose logs to read.
            from_seq: The first line seq to return; 0 means 1.
            follow: Keep going with new lines until the run finishes.

        Returns:
            The lines in seq order; iterating raises ``RunNotFoundError`` for an unknown run.
        """
        request = rq.tail_logs(run_id, from_seq, follow)
        return self._stream(self._stub.TailLogs, request, rq.tailed_lines)

    async def append_events(
        self, events: Iterable[ledger_pb2.LedgerEvent], *, batch_id: str = ""
    ) -> run_service_pb2.AppendEventsResponse:
        """Append producer events (possibly for many runs) in one transaction.

        Args:
            events: The events, in order, with seq 0.
            batch_id: Makes a resend acknowledged without a second append; empty means
                no deduplication.

        Returns:
            The seqs assigned per run, and whether the batch was a duplicate.

        Raises:
            InvalidArgumentError: An event is malformed (nothing was appended).
            FailedPreconditionError: An event needs an unknown or finished run.
            PayloadTooLargeError: The batch exceeds the coordinator's limit.
        """
        request = rq.append_events(events, batch_id)
        return await self._call(self._stub.AppendEvents, request)

    async def report_status(
        self, patch: run_service_pb2.StatusPatch, *, batch_id: str = ""
    ) -> run_service_pb2.ReportStatusResponse:
        """Report a coarse status; the coordinator turns it into ledger events.

        Args:
            patch: The status report.
            batch_id: Makes a resend acknowledged without a second append.

        Returns:
            The events derived from the patch, with their seqs.

        Raises:
            InvalidArgumentError: The patch is malformed.
        """
        request = rq.report_status(patch, batch_id)
        return await self._call(self._stub.ReportStatus, request)


class RunHandle(Generic[_OutT]):
    """One run on a coordinator: wait for its result, watch, signal or cancel it.

    Get one from :meth:`Client.start` or :meth:`Client.get_handle`. A handle is a
    run id and a client: it holds no state of the run and stays valid for as long
    as the client is open. Errors are those of :class:`Client`.

    Args:
        client: The client the handle calls through.
        run_id: The run.
        created: Whether the call that made the handle created the run.
        result_type: The type :meth:`result` decodes into by default.
    """

    def __init__(
        self, client: Client, run_id: str, *, created: bool = False, result_type: Any = None
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
    def client(self) -> Client:
        """The client the handle calls through."""
        return self._client

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self._run_id!r}, created={self._created})"

    # A timeout argument rather than the caller's asyncio.timeout (ASYNC109): expiry
    # raises ResultTimeoutError carrying the last snapshot seen, as SyncRunHandle does.
    @overload
    async def result(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> _OutT: ...
    @overload
    async def result(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        result_type: type[_T],
    ) -> _T: ...
    async def result(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        result_type: Any = rq.HANDLE_RESULT_TYPE,
    ) -> Any:
        """Wait for the run to end; return its result, or raise why it did not complete.

        Follows the run with WatchRun (no polling), resuming after a coordinator
        restart as :meth:`watch` does. A run that has already ended answers at once.

        Args:
            timeout: Seconds to wait; None waits for as long as the run takes.
            result_type: Decode the result into this type (a dataclass, a pydantic
                model, ``list[X]``, ...; ``Payload`` for the stored payload); by
                default the workflow definition's return type, else plain JSON.

        Returns:
            The completed run's result; None when it has none.

        Raises:
            RunFailedError: The run failed (``error_type``, ``error_message`` and the
                final ``snapshot`` say how).
            RunCancelledError: The run was cancelled.
            RunTimedOutError: The run passed its execution timeout.
            RunTerminatedError: An operator terminated the run.
            ResultTimeoutError: ``timeout`` passed first; the run goes on.
            RunNotFoundError: No run has this id.
            LedgerflowError: The result does not decode as ``result_type``.
        """
        hint = self._result_type if result_type is rq.HANDLE_RESULT_TYPE else result_type
        latest: ledger_pb2.RunSnapshot | None = None
        scope = asyncio.timeout(timeout)
        try:
            # Only the first snapshot (for ResultTimeoutError) and the last one matter.
            async with scope, aclosing(self._watch(0, skip_intermediate=True)) as snapshots:
                async for latest in snapshots:  # noqa: B007 - the last one is the outcome
                    pass
        except TimeoutError as err:
            if timeout is None or not scope.expired():
                raise
            raise ResultTimeoutError(self._run_id, timeout, latest) from err
        if latest is None or not is_terminal(latest.status):  # watch() only ends at the end
            raise LedgerflowError(f"run {self._run_id}: the watch ended before the run did")
        return rq.run_result(latest, hint)

    def watch(self, *, after_seq: int = 0) -> AsyncGenerator[ledger_pb2.RunSnapshot, None]:
        """Stream the run's snapshot: the current one, then one per change, until it ends.

        Unlike :meth:`Client.watch_run`, the watch survives the coordinator going away:
        when the stream ends before the run does (a coordinator shutting down ends
        streams cleanly) or the coordinator cannot be reached, it resumes from the
        last snapshot seen, with backoff. It raises ``CoordinatorUnavailableError``
        only after a minute without reaching the coordinator. Close it early with
        :func:`contextlib.aclosing`.

        Args:
            after_seq: Resume an earlier watch: skip the first snapshot unless the run
                changed after this seq (the ``last_seq`` of the last snapshot seen).

        Returns:
            The snapshots; the last one is terminal.
        """
        return self._watch(after_seq)

    async def _watch(
        self, after_seq: int, *, skip_intermediate: bool = False
    ) -> AsyncGenerator[ledger_pb2.RunSnapshot, None]:
        last = after_seq
        reconnect = rq.Reconnect()
        while True:
            try:
                stream = self._client.watch_run(
                    self._run_id, after_seq=last, skip_intermediate=skip_intermediate
                )
                async with aclosing(stream):
                    async for snapshot in stream:
                        reconnect.received()
                        last = snapshot.last_seq
                        yield snapshot
                        if is_terminal(snapshot.status):
                            return
                # The stream ended early. It also ends at once, sending nothing, for a run
                # that had already ended by ``after_seq``: only the snapshot tells which.
                snapshot = await self._client.get_run(self._run_id)
                reconnect.succeeded()
                if is_terminal(snapshot.status):
                    if snapshot.last_seq > last:
                        yield snapshot
                    return
                delay = reconnect.delay(time.monotonic())
            except CoordinatorUnavailableError as err:
                delay = reconnect.delay(time.monotonic(), err)
            await asyncio.sleep(delay)

    async def describe(self) -> ledger_pb2.RunSnapshot:
        """Return the run's current snapshot.

        Raises:
            RunNotFoundError: No run has this id.
        """
        return await self._client.get_run(self._run_id)

    async def cancel(
        self, reason: str = "", *, identity: str = ""
    ) -> run_service_pb2.CancelRunResponse:
        """Ask for the run to be cancelled; a repeated request is acknowledged, not repeated.

        The run ends cancelled once its worker has compensated; :meth:`result` then
        raises ``RunCancelledError``.

        Args:
            reason: Recorded in the ledger.
            identity: Who asks; empty means the client's identity.

        Returns:
            The cancel_requested event's seq and whether it was already requested.

        Raises:
            RunNotFoundError: No run has this id.
            FailedPreconditionError: The run has finished.
        """
        return await self._client.cancel_run(self._run_id, reason, identity)

    async def signal(
        self, name: str, payload: object = None, *, request_id: str = "", identity: str = ""
    ) -> run_service_pb2.SignalRunResponse:
        """Send a signal to the run.

        Args:
            name: The signal's name.
            payload: The signal's body, converted like ``start``'s input.
            request_id: Deduplicates retried sends; empty means no deduplication.
            identity: Who sends; empty means the client's identity.

        Returns:
            The signal event's seq and whether ``request_id`` was already used.

        Raises:
            RunNotFoundError: No run has this id.
            FailedPreconditionError: The run has finished.
            PayloadTooLargeError: The payload exceeds the coordinator's limit.
            InvalidArgumentError: The payload has no JSON form.
        """
        return await self._client.signal_run(
            self._run_id, name, payload, request_id=request_id, identity=identity
        )

"""A scripted RunService for tests: records requests, answers what the test queued.

It runs in a real in-process ``grpc.aio`` server on port 0 (grpc_testing would
silently pass an async servicer). Unary methods answer from a queue of canned
responses, ``Abort``s or ``HOLD``; streaming methods yield a scripted list, where
``Abort`` ends the stream with a status. ``HOLD`` never answers: the call stays open
until the client cancels it, which sets ``cancelled``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio
from typing_extensions import override

from ledgerflow.v1 import run_service_pb2 as rs
from ledgerflow.v1 import run_service_pb2_grpc

_M = TypeVar("_M", bound=Message)
_Context = aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Abort:
    """End the call with this status instead of answering."""

    code: grpc.StatusCode
    details: str = ""


class _Hold:
    """Never answer: a unary call hangs, a stream stays open, until the client cancels."""


HOLD = _Hold()


@dataclass
class FakeRunService(run_service_pb2_grpc.RunServiceServicer):
    """The scripted service; see the module docstring."""

    requests: dict[str, list[Message]] = field(default_factory=lambda: defaultdict(list))
    replies: dict[str, list[Message | Abort | _Hold]] = field(
        default_factory=lambda: defaultdict(list)
    )
    streams: dict[str, list[Message | Abort | _Hold]] = field(default_factory=dict)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, method: str, *replies: Message | Abort | _Hold) -> None:
        """Queue answers for a unary method, used in order."""
        self.replies[method].extend(replies)

    def stream(self, method: str, *items: Message | Abort | _Hold) -> None:
        """Script what a streaming method sends."""
        self.streams[method] = list(items)

    def only_request(self, method: str) -> Message:
        (request,) = self.requests[method]
        return request

    async def _hold(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:  # only ends when the client cancels, which cancels this handler's task
            self.cancelled.set()

    async def _unary(self, method: str, request: Message, context: _Context, kind: type[_M]) -> _M:
        self.requests[method].append(request)
        if not self.replies[method]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no reply queued for {method}")
        reply = self.replies[method].pop(0)
        if isinstance(reply, Abort):
            await context.abort(reply.code, reply.details)
        if isinstance(reply, _Hold):
            await self._hold()
        assert isinstance(reply, kind), f"queued {type(reply).__name__} for {method}"
        return reply

    async def _stream(
        self, method: str, request: Message, context: _Context, kind: type[_M]
    ) -> AsyncIterator[_M]:
        self.requests[method].append(request)
        for item in self.streams.get(method, []):
            if isinstance(item, Abort):
                await context.abort(item.code, item.details)
            elif isinstance(item, _Hold):
                await self._hold()
            else:
                assert isinstance(item, kind), f"scripted {type(item).__name__} for {method}"
                yield item

    @override
    async def StartRun(self, request: rs.StartRunRequest, context: _Context) -> rs.StartRunResponse:
        return await self._unary("StartRun", request, context, rs.StartRunResponse)

    @override
    async def GetRun(self, request: rs.GetRunRequest, context: _Context) -> rs.GetRunResponse:
        return await self._unary("GetRun", request, context, rs.GetRunResponse)

    @override
    async def ListRuns(self, request: rs.ListRunsRequest, context: _Context) -> rs.ListRunsResponse:
        return await self._unary("ListRuns", request, context, rs.ListRunsResponse)

    @override
    async def CancelRun(
        self, request: rs.CancelRunRequest, context: _Context
    ) -> rs.CancelRunResponse:
        return await self._unary("CancelRun", request, context, rs.CancelRunResponse)

    @override
    async def SignalRun(
        self, request: rs.SignalRunRequest, context: _Context
    ) -> rs.SignalRunResponse:
        return await self._unary("SignalRun", request, context, rs.SignalRunResponse)

    @override
    async def GetEvents(
        self, request: rs.GetEventsRequest, context: _Context
    ) -> rs.GetEventsResponse:
        return await self._unary("GetEvents", request, context, rs.GetEventsResponse)

    @override
    async def WatchRun(
        self, request: rs.WatchRunRequest, context: _Context
    ) -> AsyncIterator[rs.WatchRunResponse]:
        # grpc.aio streams from a handler only if it is an async generator function itself.
        async for item in self._stream("WatchRun", request, context, rs.WatchRunResponse):
            yield item

    @override
    async def WatchRuns(
        self, request: rs.WatchRunsRequest, context: _Context
    ) -> AsyncIterator[rs.WatchRunsResponse]:
        # grpc.aio streams from a handler only if it is an async generator function itself.
        async for item in self._stream("WatchRuns", request, context, rs.WatchRunsResponse):
            yield item

    @override
    async def TailLogs(
        self, request: rs.TailLogsRequest, context: _Context
    ) -> AsyncIterator[rs.TailLogsResponse]:
        # grpc.aio streams from a handler only if it is an async generator function itself.
        async for item in self._stream("TailLogs", request, context, rs.TailLogsResponse):
            yield item

    @override
    async def AppendEvents(
        self, request: rs.AppendEventsRequest, context: _Context
    ) -> rs.AppendEventsResponse:
        return await self._unary("AppendEvents", request, context, rs.AppendEventsResponse)

    @override
    async def ReportStatus(
        self, request: rs.ReportStatusRequest, context: _Context
    ) -> rs.ReportStatusResponse:
        return await self._unary("ReportStatus", request, context, rs.ReportStatusResponse)


@dataclass
class FakeCoordinator:
    """A running fake: its service and the address it listens on."""

    service: FakeRunService
    address: str
    server: aio.Server


async def start_fake() -> FakeCoordinator:
    """Serve a fresh FakeRunService on 127.0.0.1, port 0."""
    service = FakeRunService()
    server = aio.server()
    run_service_pb2_grpc.add_RunServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return FakeCoordinator(service, f"127.0.0.1:{port}", server)

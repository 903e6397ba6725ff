"""Domain errors → gRPC status codes: the only place the coordinator picks a code.

Servicers raise :mod:`ledgerflow.errors` exceptions where a condition is found;
:class:`DomainErrorInterceptor` aborts the call with the mapped status and the
error's message (which names the offending field), for unary and streaming
handlers alike. Anything else propagates and gRPC reports it as UNKNOWN.

A request that does not parse (invalid UTF-8 in a string, corrupt framing, nesting
past the parser's depth limit) is the client's fault, so it is answered with
INVALID_ARGUMENT too: gRPC's own deserialization failure would report UNKNOWN. On
a bidirectional stream (``WorkerService.Connect``) a frame that does not parse
raises from the request iterator where the servicer reads it; the servicer lets
the error end the call (the worker service carries it over from its reader task),
and nothing of that frame is acted on. No RPC streams only requests, so
client-streaming handlers are passed through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from ledgerflow.errors import STATUS_CODE_NAMES, InvalidArgumentError, LedgerflowError


class _Undecodable:
    """Stands in for a request that failed to parse; the handler refuses it."""

    def __init__(self, err: DecodeError) -> None:
        # upb's message already names the type: "Error parsing message with type ...: why".
        self.error = InvalidArgumentError("request", f"cannot be parsed ({err})")


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    inner = deserializer

    def parse(data: bytes) -> Any:
        try:
            return inner(data)
        except DecodeError as err:
            return _Undecodable(err)

    return parse


def status_code_for(err: LedgerflowError) -> grpc.StatusCode:
    """Return the status code ``err`` travels as (by its nearest mapped base class)."""
    for cls in type(err).__mro__:
        name = STATUS_CODE_NAMES.get(cls)
        if name is not None:
            return grpc.StatusCode[name]
    return grpc.StatusCode.INTERNAL


def _unary(inner: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        try:
            if isinstance(request, _Undecodable):
                raise request.error
            return await inner(request, context)
        except LedgerflowError as err:
            await context.abort(status_code_for(err), str(err))

    return handler


def _stream(
    inner: Callable[[Any, Any], AsyncIterator[Any]],
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            if isinstance(request, _Undecodable):
                raise request.error
            async for item in inner(request, context):
                yield item
        except LedgerflowError as err:
            await context.abort(status_code_for(err), str(err))

    return handler


async def _parsed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


def _bidi(
    inner: Callable[[Any, Any], AsyncIterator[Any]],
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(requests: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for item in inner(_parsed(requests), context):
                yield item
        except LedgerflowError as err:
            await context.abort(status_code_for(err), str(err))

    return handler


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Aborts calls whose handler raised a LedgerflowError with the mapped status code."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap unary-unary, unary-stream and bidirectional handlers; pass the others through."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                # grpc.aio servicers' stream methods are async generators; the
                # stubs type the handler for the sync server.
                _stream(cast(Callable[[Any, Any], AsyncIterator[Any]], handler.unary_stream)),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _bidi(cast(Callable[[Any, Any], AsyncIterator[Any]], handler.stream_stream)),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

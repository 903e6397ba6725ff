"""Server-Sent Events: framing, keep-alive comments, and the stream response.

A stream is an async iterator of :class:`SseEvent` pulled one at a time: the next
event is produced only after the previous one was handed to the server, which writes
it to the socket and waits while the socket's buffer is full. So a slow browser never
builds a queue here — the fan-out hub keeps only the newest snapshot for a subscriber
that has not taken the last one (see :mod:`ledgerflow.coordinator.fanout`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import Send

RECONNECT_MILLIS = 2000
"""How long a browser waits before reconnecting a dropped stream."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event.

    Attributes:
        event: The event name (``addEventListener`` type in the browser).
        data: One line of data (JSON); must not contain a newline.
        id: The resume position the browser sends back as ``Last-Event-ID``; empty
            for events that carry no position.
    """

    event: str
    data: str
    id: str = ""

    def encode(self) -> bytes:
        """Return the event in wire format."""
        if "\n" in self.data or "\r" in self.data:
            raise ValueError("SSE data must be a single line")
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.event}\ndata: {self.data}\n\n".encode()


async def with_keepalive(events: AsyncIterator[SseEvent], interval: float) -> AsyncIterator[bytes]:
    """Encode ``events``, adding a comment line whenever ``interval`` seconds pass without one.

    The comment keeps proxies from timing out an idle stream and lets the server notice a
    browser that went away. The source is advanced in its own task so that a keep-alive
    tick never cancels a read in progress (cancelling ``anext`` would end the generator).

    Args:
        events: The source; closed when the stream ends or the browser goes away.
        interval: Seconds of silence before a keep-alive comment.

    Yields:
        Wire-format chunks, starting with the reconnect delay.
    """
    # The source starts before the first byte goes out (see SseResponse): WatchRuns
    # subscribes to the hub in its first step, so once a browser sees the stream open, no
    # change committed after that can be missed.
    pending: asyncio.Future[SseEvent] | None = asyncio.ensure_future(anext(events))
    try:
        await asyncio.sleep(0)  # one loop turn: the source runs up to its first wait
        yield f"retry: {RECONNECT_MILLIS}\n\n".encode()
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield b": keep-alive\n\n"
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield event.encode()
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await aclose(events)


async def aclose(iterator: AsyncIterator[object]) -> None:
    """Close an async generator now rather than whenever it is garbage collected.

    The RunService's streams leave their hub subscription in a ``finally``.
    """
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


class SseResponse(StreamingResponse):
    """A streaming response that sends its headers only with its first chunk.

    The first chunk is produced after the stream's source has subscribed (see
    :func:`with_keepalive`); the browser's ``open`` event fires on the headers, so the
    page's reload-on-open then cannot race the subscription.
    """

    async def stream_response(self, send: Send) -> None:
        """Send the headers and the first chunk together, then the rest."""
        chunks = aiter(self.body_iterator)
        first = await anext(chunks, b"")
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": _bytes(first), "more_body": True})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": _bytes(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _bytes(chunk: str | bytes | memoryview) -> bytes:
    return chunk.encode() if isinstance(chunk, str) else bytes(chunk)


def sse_response(events: AsyncIterator[SseEvent], keepalive: float) -> SseResponse:
    """Return a streaming ``text/event-stream`` response of ``events``."""
    return SseResponse(
        with_keepalive(events, keepalive),
        media_type="text/event-stream; charset=utf-8",
        headers={
            "Cache-Control": "no-cache, no-transform",
            # Tells nginx-style proxies not to buffer the stream.
            "X-Accel-Buffering": "no",
        },
    )

"""Fixtures for the dashboard tests: an in-process coordinator serving HTTP, an SSE reader.

The browser tests (``test_browser.py``) bring their own fixtures: real ``ledgerflow
server`` and ``ledgerflow worker`` processes and headless Chromium.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.api import Limits
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub


@pytest.fixture
async def coordinator(db_url: str) -> AsyncIterator[Coordinator]:
    """A coordinator on a fresh database (SQLite and Postgres) serving the dashboard."""
    c = Coordinator(
        ServerConfig(
            listen="127.0.0.1:0",
            database_url=db_url,
            http_listen="127.0.0.1:0",
            limits=Limits(max_payload_bytes=64 * 1024),
            shutdown_grace=2,
        )
    )
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def http(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the dashboard. The timeout only stops a hung test."""
    assert coordinator.web is not None
    async with httpx.AsyncClient(base_url=coordinator.web.url, timeout=30) as client:
        yield client


@pytest.fixture
async def api(coordinator: Coordinator) -> AsyncIterator[Any]:
    """A gRPC RunService stub: runs are created and advanced through the real API."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        yield RunServiceStub(channel)


def ev(run_id: str, case: str, t: int = 1, **fields: Any) -> pb.LedgerEvent:
    """A producer event of type ``case`` at ``t`` epoch milliseconds."""
    event = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(event.event_time, t * 1_000_000)
    payload = getattr(event, case)
    payload.CopyFrom(type(payload)(**fields))
    payload.SetInParent()
    return event


async def append(api: Any, *events: pb.LedgerEvent) -> None:
    """Append events through the API."""
    await api.AppendEvents(rpb.AppendEventsRequest(events=list(events)))


async def start(api: Any, run_id: str, workflow: str = "wf") -> None:
    """Create a run through the API."""
    await api.StartRun(rpb.StartRunRequest(workflow_name=workflow, run_id=run_id))


@dataclass
class Event:
    """One Server-Sent Event as the browser would see it."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Reads events from an open ``text/event-stream`` response, skipping comments."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()
        self.retry: int | None = None

    async def next(self) -> Event | None:
        """The next event; None when the server ended the stream."""
        event, event_id = "message", None
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if data:
                    return Event(event, "\n".join(data), event_id)
                event, event_id = "message", None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
            elif name == "retry":
                self.retry = int(value)
        return None

"""Fixtures of the client tests.

A fake coordinator on a real port and a dead port, for request shapes and errors; a
real coordinator (SQLite and Postgres, through ``db_url``) for what runs do end to end,
with a probe telling a test when a watcher waits for a run's next change.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.fanout import Hub, RunSubscription
from ledgerflow.v1 import ledger_pb2
from tests.client.fake_service import FakeCoordinator, start_fake


@pytest.fixture
async def fake() -> AsyncIterator[FakeCoordinator]:
    """A fake coordinator served by the test's own event loop."""
    coordinator = await start_fake()
    yield coordinator
    await coordinator.server.stop(grace=None)


@pytest.fixture
def dead_address() -> Iterator[str]:
    """An address that refuses connections.

    The port stays bound (without listening) for the whole test, so nothing else can
    take it and connecting to it is refused at once: no timing involved.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


class _ProbedSubscription:
    """A hub subscription that tells the probe when its stream waits for the next change."""

    def __init__(self, subscription: RunSubscription, on_wait: Callable[[], None]) -> None:
        self._subscription = subscription
        self._on_wait = on_wait

    async def next(self) -> ledger_pb2.RunSnapshot | None:
        self._on_wait()
        return await self._subscription.next()


class WatchProbe:
    """Tells a test when WatchRun streams have sent a run's snapshot and wait for more.

    WatchRun sends the current snapshot, then waits on its hub subscription; the probe
    wraps the subscriptions the coordinator's hub hands out and counts those waits. So
    a test can append a run's next event knowing a client already waits on it,
    without sleeping.
    """

    def __init__(self, hub: Hub) -> None:
        self._waits: Counter[str] = Counter()
        self._changed = asyncio.Event()
        self.terminal_only: dict[str, bool] = {}
        """Run id → whether its latest WatchRun asked only for the end (skip_intermediate)."""
        original = hub.watch_run

        def on_wait(run_id: str) -> None:
            self._waits[run_id] += 1
            self._changed.set()

        @contextmanager
        def watch_run(run_id: str, *, terminal_only: bool = False) -> Iterator[object]:
            self.terminal_only[run_id] = terminal_only
            with original(run_id, terminal_only=terminal_only) as subscription:
                yield _ProbedSubscription(subscription, lambda: on_wait(run_id))

        # The servicer only calls next(), so a wrapper stands in for the subscription.
        hub.watch_run = watch_run  # type: ignore[method-assign,assignment]

    async def waiting(self, run_id: str, watchers: int = 1) -> None:
        """Return once ``watchers`` more waits on ``run_id`` happened since the last call."""
        async with asyncio.timeout(30):
            while self._waits[run_id] < watchers:
                self._changed.clear()
                await self._changed.wait()
        self._waits[run_id] -= watchers


@pytest.fixture
async def real_coordinator(db_url: str) -> AsyncIterator[Coordinator]:
    """A real coordinator on a free port, on a fresh SQLite or Postgres database."""
    server = Coordinator(ServerConfig(listen="127.0.0.1:0", database_url=db_url, shutdown_grace=2))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def address(real_coordinator: Coordinator) -> str:
    """The real coordinator's address."""
    return f"127.0.0.1:{real_coordinator.port}"


@pytest.fixture
def probe(real_coordinator: Coordinator) -> WatchProbe:
    """A probe on the real coordinator's watch streams."""
    return WatchProbe(real_coordinator.hub)

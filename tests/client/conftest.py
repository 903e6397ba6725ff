"""Fixtures of the client tests: a fake coordinator on a real port, and a dead port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

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

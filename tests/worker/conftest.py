"""Fixtures of the worker tests: a scripted coordinator on a real port, and workers on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ledgerflow.worker import Worker
from ledgerflow.workflow import Registry
from tests.worker import workflows
from tests.worker.scripted import Served, serve


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A scripted coordinator served by the test's event loop; no protocol violations allowed."""
    workflows.reset()
    served = await serve()
    yield served
    await served.server.stop(grace=None)
    assert served.coordinator.violations == []


StartWorker = Callable[..., tuple[Worker, "asyncio.Task[None]"]]


@pytest.fixture
async def start_worker(served: Served) -> AsyncIterator[StartWorker]:
    """Start workers on the scripted coordinator; those still running are cancelled at teardown."""
    started: list[asyncio.Task[None]] = []

    def start(**kwargs: Any) -> tuple[Worker, asyncio.Task[None]]:
        kwargs.setdefault("reconnect_initial_delay", 0.01)
        kwargs.setdefault("reconnect_max_delay", 0.05)
        worker = Worker(
            served.address, kwargs.pop("workflows", Registry.from_module(workflows)), **kwargs
        )
        runner = asyncio.create_task(worker.run())
        started.append(runner)
        return worker, runner

    yield start
    # A runner that already ended is the test's business (it awaited it); the others are
    # crashed now and must end by that cancellation, not by an error of their own.
    running = [runner for runner in started if not runner.done()]
    for runner in running:
        runner.cancel()
    for result in await asyncio.gather(*running, return_exceptions=True):
        if not isinstance(result, asyncio.CancelledError):
            raise AssertionError(f"a worker ended on its own during the test: {result!r}")

"""Hello, welcome and heartbeats against the scripted coordinator."""

from __future__ import annotations

import asyncio
import importlib.metadata
import uuid

import grpc
import pytest

from ledgerflow.errors import CoordinatorUnavailableError, InvalidArgumentError, WorkerRefusedError
from ledgerflow.worker import Worker
from ledgerflow.workflow import Registry
from tests.worker import workflows
from tests.worker.conftest import StartWorker
from tests.worker.scripted import Served


async def test_hello_says_who_the_worker_is_and_what_it_serves(
    served: Served, start_worker: StartWorker
) -> None:
    worker, _ = start_worker(max_concurrent_tasks=3, identity="pod-7")
    welcome = await worker.wait_connected()
    session = await served.coordinator.wait_for_session(1)
    hello = session.hello
    assert str(uuid.UUID(hello.worker_id)) == hello.worker_id == worker.worker_id
    assert hello.identity == "pod-7"
    assert hello.language == "python"
    assert hello.sdk_version == importlib.metadata.version("ledgerflow")
    assert sorted((w.name, w.version) for w in hello.workflows) == sorted(
        (d.name, d.version) for d in Registry.from_module(workflows)
    )
    assert ("test.versioned", "2") in [(w.name, w.version) for w in hello.workflows]
    assert list(hello.step_kinds) == []
    assert hello.max_concurrent_tasks == 3
    assert list(hello.held_tasks) == []
    assert welcome.session_id == "session-1"
    assert worker.connected


async def test_hello_names_the_workers_namespace_and_none_by_default(
    served: Served, start_worker: StartWorker
) -> None:
    # Sequential, so session 1 is the namespaced worker's and session 2 the other's.
    scoped, _ = start_worker(namespace="billing")
    await scoped.wait_connected()
    unscoped, _ = start_worker()
    await unscoped.wait_connected()
    first = await served.coordinator.wait_for_session(1)
    second = await served.coordinator.wait_for_session(2)
    assert (first.hello.worker_id, first.hello.namespace) == (scoped.worker_id, "billing")
    assert (second.hello.worker_id, second.hello.namespace) == (unscoped.worker_id, "")
    assert (scoped.namespace, unscoped.namespace) == ("billing", None)


async def test_each_worker_has_its_own_id_and_a_default_identity(served: Served) -> None:
    a = Worker(served.address, workflows.chain)
    b = Worker(served.address, [workflows.chain])
    assert a.worker_id != b.worker_id
    assert ":" in a.identity  # host:pid


def test_a_worker_needs_a_workflow_and_sane_numbers() -> None:
    with pytest.raises(InvalidArgumentError, match="workflows"):
        Worker("127.0.0.1:1", [])
    with pytest.raises(InvalidArgumentError, match="max_concurrent_tasks"):
        Worker("127.0.0.1:1", workflows.chain, max_concurrent_tasks=0)
    with pytest.raises(InvalidArgumentError, match="drain_timeout"):
        Worker("127.0.0.1:1", workflows.chain, drain_timeout=-1)


async def test_heartbeats_list_the_held_tasks_at_the_welcomed_cadence(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    coordinator.heartbeat_interval_ms = 5
    worker, _ = start_worker()
    await worker.wait_connected()
    await coordinator.wait_until(lambda: len(coordinator.heartbeats()) >= 2, "idle heartbeats")
    assert coordinator.heartbeats()[:2] == [[], []]

    task = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step started")
    seen = len(coordinator.heartbeats())
    await coordinator.wait_until(lambda: len(coordinator.heartbeats()) >= seen + 3, "3 more")
    assert coordinator.heartbeats()[seen : seen + 3] == [[(task.task_id, 1)]] * 3

    workflows.gate("g").set()
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    # Once the result is acknowledged the task is no longer held: a later heartbeat
    # lists nothing (if the worker kept the task, this never happens).
    after_result = len(coordinator.received)
    await coordinator.wait_until(
        lambda: any(
            m.HasField("heartbeat") and not m.heartbeat.tasks
            for _, m in coordinator.received[after_result:]
        ),
        "an empty heartbeat after the result",
    )


async def test_a_refused_hello_ends_run_with_worker_refused(
    served: Served, start_worker: StartWorker
) -> None:
    served.coordinator.refuse_hello = (
        grpc.StatusCode.INVALID_ARGUMENT,
        "hello.workflows: required",
    )
    worker, runner = start_worker()
    with pytest.raises(WorkerRefusedError) as caught:
        await asyncio.wait_for(runner, 10)
    assert caught.value.code == "INVALID_ARGUMENT"
    with pytest.raises(CoordinatorUnavailableError):
        await worker.wait_connected()
    assert "hello.workflows: required" in str(caught.value)
    assert served.address in str(caught.value)


async def test_a_silent_coordinator_is_given_up_and_reconnected(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    coordinator.ack_heartbeats = False
    coordinator.heartbeat_interval_ms = 5
    coordinator.lease_duration_ms = 20
    worker, _ = start_worker()
    await coordinator.wait_for_session(2)
    assert coordinator.sessions[0].ended
    assert coordinator.sessions[1].hello.worker_id == worker.worker_id

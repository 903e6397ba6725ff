"""Namespaces end to end: a token confined to one cannot see or touch another's runs.

A real coordinator on loopback (SQLite and Postgres) with a token file of namespaced
tokens, called through the raw gRPC stubs so every RPC is exercised as any SDK would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from ledgerflow import workflow
from ledgerflow.client import Client
from ledgerflow.coordinator._server import Coordinator
from ledgerflow.coordinator.api._auth import TokenTable, hash_token, new_token
from ledgerflow.errors import WorkerRefusedError
from ledgerflow.ledger import json_payload
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub
from ledgerflow.worker import Worker
from ledgerflow.workflow import Registry
from tests.security.conftest import StartCoordinator

Code = grpc.StatusCode


@dataclass(frozen=True)
class Tenants:
    """Clear tokens: clients of namespaces a and b, and an admin of every namespace."""

    a: str
    b: str
    admin: str
    a_worker: str
    b_worker: str
    file: Path


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    clear = {name: new_token() for name in ("a", "b", "admin", "a_worker", "b_worker")}
    entries = [
        ("a", "client", "a"),
        ("b", "client", "b"),
        ("admin", "admin", "*"),
        ("a_worker", "worker", "a"),
        ("b_worker", "worker", "b"),
    ]
    path = tmp_path / "tokens.toml"
    path.write_text(
        "".join(
            f'[[tokens]]\nname = "{name}"\nsha256 = "{hash_token(clear[name])}"\n'
            f'scopes = ["{scope}"]\nnamespace = "{namespace}"\n\n'
            for name, scope, namespace in entries
        )
    )
    return Tenants(**clear, file=path)


@pytest.fixture
async def coordinator(
    tenants: Tenants, start_coordinator: StartCoordinator, db_url: str
) -> Coordinator:
    return await start_coordinator(auth_tokens=TokenTable.load(tenants.file), database_url=db_url)


Call = Callable[..., Awaitable[Any]]


class As:
    """Calls RunService with one token."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.stub = RunServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def __call__(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.metadata)

    async def refused(self, method: str, request: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self(method, request)
        return caught.value

    async def stream_refused(self, method: str, request: Any) -> grpc.aio.AioRpcError:
        call = getattr(self.stub, method)(request, metadata=self.metadata)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        return caught.value

    async def listed(self, namespace: str = "") -> set[str]:
        page = await self(
            "ListRuns", rpb.ListRunsRequest(filter=rpb.RunFilter(namespace=namespace))
        )
        return {r.run_id for r in page.runs}


def _event(run_id: str) -> pb.LedgerEvent:
    event = pb.LedgerEvent(run_id=run_id)
    event.event_time.GetCurrentTime()
    return event


async def _fingerprint(admin: As, run_id: str) -> list[bytes]:
    page = await admin("GetEvents", rpb.GetEventsRequest(run_id=run_id, page_size=1000))
    return [e.SerializeToString(deterministic=True) for e in page.events]


async def test_a_confined_token_finds_no_run_of_another_namespace(
    coordinator: Coordinator, tenants: Tenants
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        a, b, admin = As(channel, tenants.a), As(channel, tenants.b), As(channel, tenants.admin)
        started = await b("StartRun", rpb.StartRunRequest(workflow_name="wf", run_id="rb"))
        assert started.run.namespace == "b"  # the token's namespace, not named in the request
        mine = await a("StartRun", rpb.StartRunRequest(workflow_name="wf", run_id="ra"))
        assert mine.run.namespace == "a"
        before = await _fingerprint(admin, "rb")
        missing = await a.refused("GetRun", rpb.GetRunRequest(run_id="no-such-run"))

        # Every run-addressed RPC answers exactly as for a run that does not exist.
        refusals = [
            await a.refused("GetRun", rpb.GetRunRequest(run_id="rb")),
            await a.refused("GetEvents", rpb.GetEventsRequest(run_id="rb")),
            await a.refused("CancelRun", rpb.CancelRunRequest(run_id="rb", reason="x")),
            await a.refused(
                "SignalRun",
                rpb.SignalRunRequest(run_id="rb", signal_name="go", payload=json_payload(1)),
            ),
            await a.stream_refused("WatchRun", rpb.WatchRunRequest(run_id="rb")),
            await a.stream_refused("TailLogs", rpb.TailLogsRequest(run_id="rb", follow=True)),
            await a.refused(
                "ReportStatus",
                rpb.ReportStatusRequest(patch=rpb.StatusPatch(run_id="rb", status="failed")),
            ),
        ]
        log = _event("rb")
        log.log_appended.lines.append("planted")
        refusals.append(await a.refused("AppendEvents", rpb.AppendEventsRequest(events=[log])))
        for err in refusals:
            assert err.code() is Code.NOT_FOUND, err.details()
            assert err.details() == (missing.details() or "").replace("no-such-run", "rb")

        # Lists: only the caller's runs; naming another namespace is refused, not empty.
        assert await a.listed() == {"ra"}
        assert await b.listed() == {"rb"}
        assert await admin.listed() == {"ra", "rb"}
        assert await admin.listed("a") == {"ra"}
        denied = await a.refused(
            "ListRuns", rpb.ListRunsRequest(filter=rpb.RunFilter(namespace="b"))
        )
        assert denied.code() is Code.PERMISSION_DENIED
        assert "filter.namespace" in (denied.details() or "")
        assert tenants.a not in (denied.details() or "")

        # Starting a run elsewhere, or under a taken run id, reveals nothing either.
        denied = await a.refused("StartRun", rpb.StartRunRequest(workflow_name="wf", namespace="b"))
        assert denied.code() is Code.PERMISSION_DENIED
        assert (denied.details() or "").startswith("namespace:")
        taken = await a.refused("StartRun", rpb.StartRunRequest(workflow_name="wf", run_id="rb"))
        assert taken.code() is Code.ALREADY_EXISTS
        assert "wf" not in (taken.details() or "")

        # b's run is exactly as it was, and b still sees and acts on it.
        assert await _fingerprint(admin, "rb") == before
        got = await b("GetRun", rpb.GetRunRequest(run_id="rb"))
        assert got.run.namespace == "b"
        assert not got.run.cancel_requested
        await b("CancelRun", rpb.CancelRunRequest(run_id="rb", reason="mine"))


async def test_idempotency_keys_are_per_namespace(
    coordinator: Coordinator, tenants: Tenants
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        a, b = As(channel, tenants.a), As(channel, tenants.b)
        request = rpb.StartRunRequest(workflow_name="wf", idempotency_key="order-7")
        first_a = await a("StartRun", request)
        first_b = await b("StartRun", request)
        again_a = await a("StartRun", request)
        assert first_a.created
        assert first_b.created
        assert not again_a.created
        assert first_a.run.run_id != first_b.run.run_id
        assert again_a.run.run_id == first_a.run.run_id
        assert (first_a.run.namespace, first_b.run.namespace) == ("a", "b")


async def test_watch_runs_streams_only_the_callers_namespace(
    coordinator: Coordinator, tenants: Tenants
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        a, b = As(channel, tenants.a), As(channel, tenants.b)
        await b("StartRun", rpb.StartRunRequest(workflow_name="wf", run_id="old-b"))
        await a("StartRun", rpb.StartRunRequest(workflow_name="wf", run_id="old-a"))
        # The stubs type the sync stub's stream; this is grpc.aio's call.
        watch: Any = a.stub.WatchRuns(
            rpb.WatchRunsRequest(include_existing=True), metadata=a.metadata
        )
        assert (await watch.read()).run.run_id == "old-a"
        # Committed in this order: had b's run leaked into a's stream, it would come first.
        await b("StartRun", rpb.StartRunRequest(workflow_name="wf", run_id="new-b"))
        await a("StartRun", rpb.StartRunRequest(workflow_name="wf", run_id="new-a"))
        update = (await watch.read()).run
        assert (update.run_id, update.namespace) == ("new-a", "a")
        watch.cancel()


async def test_append_events_creates_runs_in_the_callers_namespace(
    coordinator: Coordinator, tenants: Tenants
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        a, admin = As(channel, tenants.a), As(channel, tenants.admin)
        created = _event("bridged")
        created.run_created.workflow_name = "external"
        await a("AppendEvents", rpb.AppendEventsRequest(events=[created]))
        got = await a("GetRun", rpb.GetRunRequest(run_id="bridged"))
        assert got.run.namespace == "a"

        elsewhere = _event("bridged-b")
        elsewhere.run_created.workflow_name = "external"
        elsewhere.run_created.namespace = "b"
        denied = await a.refused("AppendEvents", rpb.AppendEventsRequest(events=[elsewhere]))
        assert denied.code() is Code.PERMISSION_DENIED
        assert "events[0].run_created.namespace" in (denied.details() or "")
        assert await admin.listed() == {"bridged"}

        patched = await a(
            "ReportStatus",
            rpb.ReportStatusRequest(patch=rpb.StatusPatch(run_id="reported", workflow_name="x")),
        )
        assert patched.events[0].run_created.namespace == "a"


@pytest.mark.parametrize("name", ["B", "-b", "a b", "x" * 64, "ns/1"])
async def test_malformed_namespaces_are_invalid(
    coordinator: Coordinator, tenants: Tenants, name: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        admin = As(channel, tenants.admin)
        bad = await admin.refused(
            "StartRun", rpb.StartRunRequest(workflow_name="wf", namespace=name)
        )
        assert bad.code() is Code.INVALID_ARGUMENT
        assert (bad.details() or "").startswith("namespace:")
        bad = await admin.refused(
            "ListRuns", rpb.ListRunsRequest(filter=rpb.RunFilter(namespace=name))
        )
        assert bad.code() is Code.INVALID_ARGUMENT
        assert (bad.details() or "").startswith("filter.namespace:")
        assert await admin.listed() == set()


@workflow.defn(name="ns.child")
async def ns_child(ctx: workflow.Context, n: int) -> int:
    return n + 1


@workflow.defn(name="ns.parent")
async def ns_parent(ctx: workflow.Context, n: int) -> dict[str, Any]:
    child = await ctx.start_child(ns_child, n, run_id=f"{ctx.run_id}-child")
    return {"child": child.run_id, "value": await child.result()}


def _worker(address: str, token: str, **options: Any) -> Worker:
    return Worker(
        address,
        Registry([ns_parent, ns_child]),
        token=token,
        reconnect_initial_delay=0.01,
        reconnect_max_delay=0.05,
        **options,
    )


async def test_a_confined_worker_gets_only_its_namespaces_tasks(
    coordinator: Coordinator, tenants: Tenants
) -> None:
    address = f"127.0.0.1:{coordinator.port}"
    async with (
        await Client.connect(address, token=tenants.a) as a,
        await Client.connect(address, token=tenants.b) as b,
    ):
        # b's run is the oldest: a worker handed tasks oldest first regardless of
        # namespace would take it before a's.
        await b.start("ns.parent", 1, run_id="pb")
        await a.start("ns.parent", 10, run_id="pa")
        worker_a = _worker(address, tenants.a_worker, max_concurrent_tasks=1)
        runner = asyncio.create_task(worker_a.run())
        try:
            assert await a.get_handle("pa").result(timeout=60) == {
                "child": "pa-child",
                "value": 11,
            }
            child = await a.get_run("pa-child")
            assert (child.namespace, child.parent_run_id) == ("a", "pa")
            untouched = await b.get_run("pb")
            assert untouched.status == pb.RUN_STATUS_QUEUED
            assert not untouched.HasField("start_time")
        finally:
            worker_a.stop()
            await runner

        worker_b = _worker(address, tenants.b_worker)
        runner = asyncio.create_task(worker_b.run())
        try:
            assert await b.get_handle("pb").result(timeout=60) == {"child": "pb-child", "value": 2}
            assert (await b.get_run("pb-child")).namespace == "b"
        finally:
            worker_b.stop()
            await runner


async def test_a_worker_may_not_ask_for_another_namespace(
    coordinator: Coordinator, tenants: Tenants
) -> None:
    worker = _worker(f"127.0.0.1:{coordinator.port}", tenants.a_worker, namespace="b")
    with pytest.raises(WorkerRefusedError) as caught:
        await worker.run()
    assert caught.value.code == "PERMISSION_DENIED"
    assert "hello.namespace" in caught.value.details

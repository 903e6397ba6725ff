"""Bearer tokens and scopes end to end: a real coordinator on loopback, real clients, workers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledgerflow.cli import main
from ledgerflow.cli._run import EXIT_ERROR
from ledgerflow.client import Client, SyncClient
from ledgerflow.coordinator._server import Coordinator
from ledgerflow.errors import LedgerflowError, PermissionDeniedError, WorkerRefusedError
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1 import worker_service_pb2 as wpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub
from ledgerflow.v1.worker_service_pb2_grpc import WorkerServiceStub
from ledgerflow.worker import Worker
from ledgerflow.workflow import Registry
from tests.security.conftest import StartCoordinator, Tokens
from tests.worker import workflows

Code = grpc.StatusCode


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def unary_status(address: str, metadata: tuple[tuple[str, str], ...] | None) -> grpc.RpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await RunServiceStub(channel).ListRuns(rpb.ListRunsRequest(), metadata=metadata)
    return caught.value


async def test_missing_and_unknown_tokens_are_unauthenticated(secured: Coordinator) -> None:
    address = f"127.0.0.1:{secured.port}"
    missing = await unary_status(address, None)
    assert missing.code() is Code.UNAUTHENTICATED
    assert "bearer token" in (missing.details() or "")
    wrong = "lf_not-a-real-token-0123456789"
    unknown = await unary_status(address, bearer(wrong))
    assert unknown.code() is Code.UNAUTHENTICATED
    assert wrong not in (unknown.details() or "")
    malformed = await unary_status(address, (("authorization", "Basic dXNlcjpwdw=="),))
    assert malformed.code() is Code.UNAUTHENTICATED


async def test_streams_are_checked_too(secured: Coordinator, tokens: Tokens) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        watch = RunServiceStub(channel).WatchRuns(rpb.WatchRunsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
        assert caught.value.code() is Code.UNAUTHENTICATED
        # A client token is not a worker token.
        connect = WorkerServiceStub(channel).Connect(metadata=bearer(tokens.client))
        await connect.write(wpb.ConnectRequest(hello=wpb.WorkerHello(worker_id="w")))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await connect.read()
        assert caught.value.code() is Code.PERMISSION_DENIED
        assert tokens.client not in (caught.value.details() or "")
        assert "'app'" in (caught.value.details() or "")  # names the token, not its value


async def test_scopes(secured: Coordinator, tokens: Tokens) -> None:
    address = f"127.0.0.1:{secured.port}"
    denied = await unary_status(address, bearer(tokens.worker))
    assert denied.code() is Code.PERMISSION_DENIED
    assert "client" in (denied.details() or "")
    assert tokens.worker not in (denied.details() or "")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = RunServiceStub(channel)
        for token in (tokens.client, tokens.admin):  # admin holds every scope
            await stub.ListRuns(rpb.ListRunsRequest(), metadata=bearer(token))


async def test_health_stays_open(secured: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # the stubs type the sync stub
        reply = await health.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_clients_and_worker_with_tokens_run_a_workflow(
    secured: Coordinator, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    workflows.reset()
    address = f"127.0.0.1:{secured.port}"
    worker = Worker(
        address,
        Registry.from_module(workflows),
        token=tokens.worker,
        reconnect_initial_delay=0.01,
        reconnect_max_delay=0.05,
    )
    runner = asyncio.create_task(worker.run())
    try:
        async with await Client.connect(address, token=tokens.client) as client:
            handle = await client.start("test.chain", 3, run_id="chain-1")
            assert await handle.result(timeout=30) == 3
            with pytest.raises(LedgerflowError, match="UNAUTHENTICATED"):
                async with await Client.connect(address) as anonymous:
                    await anonymous.get_run("chain-1")

        def sync_side() -> None:
            with SyncClient.connect(address, token=tokens.admin) as sync:
                assert [r.run_id for r in sync.list_runs().runs] == ["chain-1"]
            with (
                SyncClient.connect(address, token=tokens.worker) as sync,
                pytest.raises(PermissionDeniedError, match="lacks the 'client' scope"),
            ):
                sync.get_run("chain-1")

        await asyncio.to_thread(sync_side)
    finally:
        worker.stop()
        await runner
    _assert_no_secret_logged(caplog, tokens)


async def test_worker_without_worker_scope_is_refused_for_good(
    secured: Coordinator, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    worker = Worker(
        f"127.0.0.1:{secured.port}",
        Registry.from_module(workflows),
        token=tokens.client,
        reconnect_initial_delay=0.01,
    )
    with pytest.raises(WorkerRefusedError):
        await asyncio.wait_for(worker.run(), 10)
    _assert_no_secret_logged(caplog, tokens)


async def test_cli_token_flag_and_env(
    secured: Coordinator,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    address = f"127.0.0.1:{secured.port}"
    monkeypatch.delenv("LEDGERFLOW_TOKEN", raising=False)
    assert await asyncio.to_thread(main, ["run", "list", "--address", address]) == EXIT_ERROR
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    cmd = ["run", "list", "--address", address, "--token", tokens.client]
    assert await asyncio.to_thread(main, cmd) == 0
    monkeypatch.setenv("LEDGERFLOW_TOKEN", tokens.client)
    assert await asyncio.to_thread(main, ["run", "list", "--address", address]) == 0
    out = capsys.readouterr()
    assert tokens.client not in out.out + out.err
    _assert_no_secret_logged(caplog, tokens)


async def test_open_server_on_a_public_address_warns(
    start_coordinator: StartCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ledgerflow.coordinator._server")
    await start_coordinator(listen="127.0.0.1:0")
    assert "without authentication" not in caplog.text
    await start_coordinator(listen="0.0.0.0:0")
    assert "without authentication" in caplog.text


def _assert_no_secret_logged(caplog: pytest.LogCaptureFixture, tokens: Tokens) -> None:
    assert caplog.records, "expected the coordinator and worker to log something"
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        for token in tokens.all():
            assert token not in text, f"a token leaked into the log: {record.name}"

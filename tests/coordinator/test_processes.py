"""Real coordinator processes: restarts keep everything; replicas stream each other's commits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub

BIN = Path(sys.executable).parent / "ledgerflow"


@contextmanager
def server(database_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``ledgerflow server`` on a free port; yield (process, address)."""
    proc = subprocess.Popen(
        [str(BIN), "server", "--listen", "127.0.0.1:0", "--database-url", database_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def ev(run_id: str, case: str, **fields: Any) -> pb.LedgerEvent:
    event = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(event.event_time, 1_000_000)
    payload = getattr(event, case)
    payload.CopyFrom(type(payload)(**fields))
    payload.SetInParent()
    return event


async def test_a_restarted_coordinator_keeps_everything(db_url: str) -> None:
    with server(db_url) as (proc, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = RunServiceStub(channel)
            await stub.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
            await stub.AppendEvents(
                rpb.AppendEventsRequest(
                    events=[
                        ev("r1", "log_appended", lines=["a", "b"], channel="c", channel_offset=0)
                    ]
                )
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # graceful shutdown exits cleanly
    with server(db_url) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = RunServiceStub(channel)
            run = (await stub.GetRun(rpb.GetRunRequest(run_id="r1"))).run
            assert (run.last_seq, run.total_log_count) == (2, 2)
            # The log cursor survived too: a resend appends only the new line.
            response = await stub.AppendEvents(
                rpb.AppendEventsRequest(
                    events=[
                        ev(
                            "r1",
                            "log_appended",
                            lines=["a", "b", "c"],
                            channel="c",
                            channel_offset=0,
                        )
                    ]
                )
            )
            assert [(r.first_seq, r.last_seq) for r in response.ranges] == [(3, 3)]
            lines = [
                line.text
                async for m in stub.TailLogs(rpb.TailLogsRequest(run_id="r1"))
                for line in m.lines
            ]
            assert lines == ["a", "b", "c"]


async def test_a_second_coordinator_streams_the_first_ones_commits(pg_cluster: Any) -> None:
    if not pg_cluster.running:
        pg_cluster.start()
    url = pg_cluster.create_database("replicas")
    with server(url) as (_, first), server(url) as (_, second):
        async with grpc.aio.insecure_channel(first) as a, grpc.aio.insecure_channel(second) as b:
            writer, reader = RunServiceStub(a), RunServiceStub(b)
            await writer.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
            watch: Any = reader.WatchRun(rpb.WatchRunRequest(run_id="r1"))
            tail: Any = reader.TailLogs(rpb.TailLogsRequest(run_id="r1", follow=True))
            assert (await watch.read()).snapshot.last_seq == 1
            await writer.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_started")]))
            assert (await watch.read()).snapshot.status == pb.RUN_STATUS_RUNNING
            await writer.AppendEvents(
                rpb.AppendEventsRequest(events=[ev("r1", "log_appended", lines=["from A"])])
            )
            logs = await tail.read()
            assert [line.text for line in logs.lines] == ["from A"]
            await writer.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_completed")]))
            seqs = []
            while (message := await watch.read()) is not grpc.aio.EOF:
                seqs.append(message.snapshot.last_seq)
            assert seqs[-1] == 4
            assert await tail.read() is grpc.aio.EOF
            # Both replicas wrote to one ledger without a gap or duplicate.
            await reader.AppendEvents(
                rpb.AppendEventsRequest(events=[ev("r1", "log_appended", lines=["from B"])])
            )
            page = await writer.GetEvents(rpb.GetEventsRequest(run_id="r1"))
            assert [e.seq for e in page.events] == [1, 2, 3, 4, 5]


async def test_concurrent_appends_through_two_replicas_never_gap(pg_cluster: Any) -> None:
    if not pg_cluster.running:
        pg_cluster.start()
    url = pg_cluster.create_database("replicas_hot")
    with server(url) as (_, first), server(url) as (_, second):
        async with grpc.aio.insecure_channel(first) as a, grpc.aio.insecure_channel(second) as b:
            stubs = [RunServiceStub(a), RunServiceStub(b)]
            await stubs[0].StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="hot"))

            async def producer(n: int) -> None:
                for i in range(15):
                    await stubs[n % 2].AppendEvents(
                        rpb.AppendEventsRequest(
                            events=[ev("hot", "log_appended", lines=[f"{n}:{i}"])]
                        )
                    )

            await asyncio.gather(*(producer(n) for n in range(8)))
            page = await stubs[1].GetEvents(rpb.GetEventsRequest(run_id="hot", page_size=1000))
            assert [e.seq for e in page.events] == list(range(1, 122))
            texts = sorted(e.log_appended.lines[0] for e in page.events[1:])
            assert texts == sorted(f"{n}:{i}" for n in range(8) for i in range(15))


@pytest.mark.parametrize("what", ["verify"])
def test_admin_verify_command(db_url: str, what: str) -> None:
    """``ledgerflow admin verify`` exits 0 on a healthy database and 1 naming a tampered run."""
    import asyncio as aio

    from sqlalchemy import update

    from ledgerflow.coordinator.store import create_engine
    from ledgerflow.coordinator.store._schema import runs

    async def seed() -> None:
        with server(db_url) as (_, address):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = RunServiceStub(channel)
                await stub.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="good"))
                await stub.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="bad"))

    aio.run(seed())
    ok = subprocess.run(
        [str(BIN), "admin", what, "--database-url", db_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "2 runs checked, no differences" in ok.stdout

    async def tamper() -> None:
        engine = create_engine(db_url)
        async with engine.begin() as conn:
            await conn.execute(update(runs).where(runs.c.run_id == "bad").values(snapshot=b""))
        await engine.dispose()

    aio.run(tamper())
    found = subprocess.run(
        [str(BIN), "admin", what, "--database-url", db_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 1
    assert "bad: snapshot differs" in found.stdout
    single = subprocess.run(
        [str(BIN), "admin", what, "--run", "good", "--database-url", db_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert single.returncode == 0
    assert "1 run checked, no differences" in single.stdout


async def test_kill_9_mid_append_loses_nothing_acknowledged_and_doubles_nothing(
    db_url: str,
) -> None:
    """Clients append with batch ids; the coordinator is SIGKILLed mid-stream; clients resend.

    Every acknowledged batch must survive, and resending every batch (as a client does
    after an error) must leave each batch in the ledger exactly once, with gapless seqs.
    """
    from ledgerflow.coordinator.store import create_engine, verify

    clients, batches, size = 4, 25, 5

    def batch(n: int, i: int) -> rpb.AppendEventsRequest:
        return rpb.AppendEventsRequest(
            batch_id=f"{n}-{i}",
            events=[ev("r", "log_appended", lines=[f"{n}-{i}-{k}"]) for k in range(size)],
        )

    acked: set[tuple[int, int]] = set()
    with server(db_url) as (proc, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = RunServiceStub(channel)
            await stub.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r"))
            enough = asyncio.Event()

            async def client(n: int) -> None:
                for i in range(batches):
                    try:
                        await stub.AppendEvents(batch(n, i))
                    except grpc.aio.AioRpcError:
                        return  # the coordinator died under us
                    acked.add((n, i))
                    if len(acked) >= 30:
                        enough.set()

            tasks = [asyncio.create_task(client(n)) for n in range(clients)]
            await enough.wait()
            proc.kill()  # SIGKILL: no graceful anything
            await asyncio.gather(*tasks)
        proc.wait(timeout=30)
    assert 30 <= len(acked) < clients * batches

    with server(db_url) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = RunServiceStub(channel)
            for n in range(clients):
                for i in range(batches):
                    response = await stub.AppendEvents(batch(n, i))
                    if (n, i) in acked:
                        assert response.duplicate, f"acknowledged batch {n}-{i} was appended twice"
            events: list[pb.LedgerEvent] = []
            after = 0
            while True:
                page = await stub.GetEvents(
                    rpb.GetEventsRequest(run_id="r", after_seq=after, page_size=1000)
                )
                events.extend(page.events)
                if not page.has_more:
                    break
                after = page.events[-1].seq
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    lines = [e.log_appended.lines[0] for e in events if e.HasField("log_appended")]
    expected = [f"{n}-{i}-{k}" for n in range(clients) for i in range(batches) for k in range(size)]
    assert sorted(lines) == sorted(expected)  # each exactly once
    engine = create_engine(db_url)
    try:
        assert await verify(engine) == (1, [])
    finally:
        await engine.dispose()

"""End to end: real ``ledgerflow server`` and ``ledgerflow worker`` processes, a real client.

Workers serve ``tests/e2e/e2e_app.py`` (copied into a temporary directory and
imported from there, as a user's module is). Steps leave marker lines in files,
so a test can count how often each step really ran across worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.client import Client
from ledgerflow.errors import RunCancelledError, RunFailedError
from ledgerflow.v1 import ledger_pb2 as pb

BIN = Path(sys.executable).parent / "ledgerflow"
REPO_ROOT_TS = Path(__file__).resolve().parents[2] / "sdk" / "typescript"
APP = Path(__file__).with_name("e2e_app.py")

# Short leases so a killed worker's task moves on quickly; heartbeats well inside.
LEASE = ["--lease-seconds", "1", "--heartbeat-seconds", "0.2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(database_url: str, port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``ledgerflow server`` on ``port``."""
    proc = subprocess.Popen(
        [
            str(BIN),
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--database-url",
            database_url,
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.search(r"listening on", line), f"server did not start: {line!r}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


@contextmanager
def worker(app_dir: Path, address: str, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``ledgerflow worker e2e_app`` from ``app_dir``."""
    proc = subprocess.Popen(
        [str(BIN), "worker", "e2e_app", "--address", address, *extra],
        cwd=app_dir,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def runs_of(marks: Path, name: str) -> int:
    path = marks / name
    return len(path.read_text().splitlines()) if path.exists() else 0


async def body_log(address: str, run_id: str) -> list[str]:
    """The run's stored lines of the body's log channel, as TailLogs returns them."""
    client = await Client.connect(address)
    try:
        lines = [line async for line in client.tail_logs(run_id)]
    finally:
        await client.close()
    return [line.text for line in lines if line.channel == "workflow"]


async def wait_for_step(client: Client, run_id: str, step_id: str) -> None:
    """Wait (on the run's snapshot stream) until ``step_id`` is running."""
    async for snap in client.watch_run(run_id):
        step = snap.steps.get(step_id)
        if step is not None and step.status == pb.STEP_STATUS_RUNNING:
            return
    raise AssertionError(f"run {run_id} ended before {step_id} ran")


async def test_a_workflow_with_several_steps_runs_to_completion(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            handle = await client.start("sum", 10, run_id="sum-1")
            assert await handle.result(timeout=60) == sum(range(10))
            snap = await handle.describe()
        finally:
            await client.close()
    assert snap.status == pb.RUN_STATUS_COMPLETED
    assert list(snap.ordered_step_ids) == ["add"] + [f"add#{i}" for i in range(2, 11)]


async def test_kill_9_of_the_worker_mid_workflow_reruns_only_the_step_in_flight(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    db_url, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    client = await Client.connect(address)
    try:
        handle = await client.start("gated", str(marks), run_id="gated-1")
        with worker(app_dir, address) as first:
            await wait_for_step(client, "gated-1", "blocked")
            first.kill()  # SIGKILL: no drain, no goodbye
            first.wait()
        with worker(app_dir, address):
            # The lease of the dead worker ends; the new worker replays the journal:
            # "first" is recorded, "blocked" was in flight and runs again.
            (marks / "gate").touch()
            assert await handle.result(timeout=60) == "done"
    finally:
        await client.close()
    assert runs_of(marks, "first") == 1
    assert runs_of(marks, "blocked") == 2
    assert runs_of(marks, "last") == 1
    assert await body_log(address, "gated-1") == [
        "[info] starting",
        "[info] first done",
        "[info] blocked done",
        "[info] finished",
    ]
    verify = await asyncio.create_subprocess_exec(
        str(BIN), "admin", "verify", "--database-url", db_url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await verify.communicate()
    assert verify.returncode == 0, out


async def test_a_coordinator_killed_and_restarted_mid_run_loses_nothing(
    db_url: str, app_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    lease = ["--lease-seconds", "5", "--heartbeat-seconds", "0.2"]
    with worker(app_dir, address):
        with server(db_url, port, *lease) as coordinator:
            client = await Client.connect(address)
            await client.start("gated", str(marks), run_id="gated-2")
            await wait_for_step(client, "gated-2", "blocked")
            coordinator.kill()
            coordinator.wait()
            await client.close()
        with server(db_url, port, *lease):
            # The worker reconnects (its stream broke) and carries on with its task.
            (marks / "gate").touch()
            client = await Client.connect(address)
            try:
                assert await client.get_handle("gated-2").result(timeout=60) == "done"
            finally:
                await client.close()
            logged = await body_log(address, "gated-2")
    assert runs_of(marks, "first") == 1
    assert runs_of(marks, "blocked") in (1, 2)  # 2 only if the lease ran out meanwhile
    assert runs_of(marks, "last") == 1
    # The body's log lines crossed a broken stream (and maybe a replay): each once.
    assert logged == [
        "[info] starting",
        "[info] first done",
        "[info] blocked done",
        "[info] finished",
    ]


async def test_compensations_run_last_to_first_and_the_run_fails(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            handle = await client.start("saga", str(marks), run_id="saga-1")
            with pytest.raises(RunFailedError) as failed:
                await handle.result(timeout=60)
        finally:
            await client.close()
    assert "ship failed" in failed.value.error_message
    assert failed.value.snapshot.compensation == pb.COMPENSATION_OUTCOME_COMPENSATED
    order = [c.step_id for c in failed.value.snapshot.compensations]
    assert order == ["pay", "book"]
    assert (runs_of(marks, "refund"), runs_of(marks, "unbook")) == (1, 1)


async def test_two_workers_share_the_load(cluster: tuple[str, int], app_dir: Path) -> None:
    # Each worker takes one task at a time; two gated runs both reach their blocked
    # step only if both workers run one each.
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with (
        worker(app_dir, address, "--max-concurrent-tasks", "1"),
        worker(app_dir, address, "--max-concurrent-tasks", "1"),
    ):
        client = await Client.connect(address)
        try:
            handles = [
                await client.start("gated", str(marks), run_id=f"load-{i}") for i in range(2)
            ]
            for h in handles:
                await wait_for_step(client, h.run_id, "blocked")
            (marks / "gate").touch()
            results = [await h.result(timeout=60) for h in handles]
            workers = set()
            for h in handles:
                async for event in client.iter_events(h.run_id):
                    if event.HasField("run_started"):
                        workers.add(event.run_started.runtime.worker_id)
        finally:
            await client.close()
    assert results == ["done", "done"]
    assert len(workers) == 2  # each run_started names the worker process that ran it


async def test_cancel_reaches_the_running_body_and_compensations_run(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address):
        client = await Client.connect(address)
        try:
            handle = await client.start("cancellable", str(marks), run_id="cancel-1")
            await wait_for_step(client, "cancel-1", "blocked")
            await handle.cancel("changed my mind")
            # The blocked step finishes (a thread cannot be interrupted); the body is
            # cancelled at its next step, and the booked step is compensated.
            (marks / "gate").touch()
            with pytest.raises(RunCancelledError):
                await handle.result(timeout=60)
            snap = await handle.describe()
        finally:
            await client.close()
    assert snap.status == pb.RUN_STATUS_CANCELLED
    assert runs_of(marks, "last") == 0
    assert runs_of(marks, "unbook") == 1


VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "determinism.json"
CALLS = [c for c in json.loads(VECTORS.read_text(encoding="utf-8"))["cases"] if "calls" in c]


@pytest.mark.parametrize("case", CALLS, ids=lambda c: c["runId"].encode().hex()[:16])
async def test_determinism_vectors_through_real_processes_and_a_replay(
    cluster: tuple[str, int], app_dir: Path, case: dict[str, Any]
) -> None:
    # ctx.random()/ctx.uuid4() in a real worker give the shared vectors' values, and a
    # second worker replaying the first half after a kill -9 draws the same ones.
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    args = {"kinds": case["calls"], "directory": str(marks), "gate_after": 2}
    client = await Client.connect(address)
    try:
        handle = await client.start("draws", args, run_id=case["runId"])
        with worker(app_dir, address) as first:
            await wait_for_step(client, case["runId"], "gate")
            first.kill()
            first.wait()
        with worker(app_dir, address):
            (marks / "gate").touch()
            assert await handle.result(timeout=60) == case["values"]
    finally:
        await client.close()
    assert runs_of(marks, "gate-step") == 2  # it ran on both workers: a real replay


async def test_a_changed_body_fails_the_task_not_the_run(
    cluster: tuple[str, int], app_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A deployment whose body no longer matches the journal must not corrupt or fail
    # the run: the task fails (NonDeterminismError), is handed back as failed, and a
    # worker with the right code finishes the run without repeating a step.
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    changed = tmp_path_factory.mktemp("changed")
    (changed / "e2e_app.py").write_text(
        APP.read_text().replace(
            'await ctx.step("one", mark, directory, "one")',
            'await ctx.step("uno", mark, directory, "uno")',
        )
    )
    client = await Client.connect(address)
    try:
        handle = await client.start("evolve", str(marks), run_id="evolve-1")
        with worker(app_dir, address) as first:
            await wait_for_step(client, "evolve-1", "two")
            first.kill()
            first.wait()
        bad = await asyncio.create_subprocess_exec(
            str(BIN),
            "worker",
            "e2e_app",
            "--address",
            address,
            cwd=changed,
            stderr=asyncio.subprocess.PIPE,
        )
        assert bad.stderr is not None
        while True:  # the worker's log says when it refused the replay
            line = await bad.stderr.readline()
            assert line, "the changed worker ended without reporting non-determinism"
            if b"NonDeterminismError" in line:
                break
        bad.terminate()
        await bad.wait()
        assert (await client.get_run("evolve-1")).status == pb.RUN_STATUS_RUNNING
        with worker(app_dir, address):
            (marks / "gate").touch()
            assert await handle.result(timeout=60) == "evolved"
    finally:
        await client.close()
    assert runs_of(marks, "one") == 1
    assert runs_of(marks, "uno") == 0  # the changed body never ran its new step

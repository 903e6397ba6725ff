"""Across languages: a Python workflow calls a step a TypeScript worker runs.

The TypeScript side is the real SDK (``sdk/typescript``), run by Node with tsx:
``sdk/typescript/e2e/step-worker.ts`` serves the kind ``images``, and
``sdk/typescript/e2e/watch-run.ts`` is a TypeScript client that starts a run and
watches it to the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ledgerflow.client import Client
from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_waits import waiting_for
from tests.e2e.test_workflows import REPO_ROOT_TS, runs_of, worker

NODE = shutil.which("node") or "node"


@contextmanager
def ts_worker(
    address: str, marks: Path, gate: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run the TypeScript step worker against ``address``."""
    env = {**os.environ, "LEDGERFLOW_ADDRESS": address, "LEDGERFLOW_E2E_MARKS": str(marks)}
    if gate is not None:
        env["LEDGERFLOW_E2E_GATE"] = str(gate)
    proc = subprocess.Popen(
        [NODE, "--import", "tsx", "e2e/step-worker.ts"],
        cwd=REPO_ROOT_TS,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "step worker ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


async def test_a_python_workflow_runs_a_typescript_step_with_its_logs_and_progress(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address), ts_worker(address, marks):
        client = await Client.connect(address)
        try:
            handle = await client.start("polyglot", "cat.png", run_id="poly")
            result = await handle.result(timeout=60)
            snap = await client.get_run("poly")
            lines = [(line.channel, line.text) async for line in client.tail_logs("poly")]
        finally:
            await client.close()
    assert result == {"name": "cat.png", "width": 200, "by": "typescript"}
    step = snap.steps["resize"]
    assert (step.status, step.worker_kind) == (pb.STEP_STATUS_COMPLETED, "images")
    assert (step.progress.completed, step.progress.total) == (2, 2)
    assert ("step:resize:log", "resizing cat.png to 200px") in lines
    assert ("workflow", "[info] asking typescript to resize cat.png") in lines
    assert runs_of(marks, "resize") == 1


async def test_a_typescript_worker_killed_mid_step_is_replaced_and_the_run_completes(
    db_url: str, app_dir: Path
) -> None:
    from tests.e2e.test_workflows import LEASE, free_port, server

    port = free_port()
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    gate = app_dir / "gate"
    with server(db_url, port, *LEASE), worker(app_dir, address):
        client = await Client.connect(address)
        try:
            await client.start("polyglot", "dog.png", run_id="killed")
            with ts_worker(address, marks, gate) as first:
                await waiting_for(client, "killed", "step:resize")
                # Its progress shows the handler itself runs (not just the dispatch).
                async for snap in client.watch_run("killed"):
                    if snap.steps["resize"].progress.completed == 1:
                        break
                first.kill()  # kill -9: no drain, no result
                first.wait()
            gate.touch()
            with ts_worker(address, marks):
                result = await client.get_handle("killed").result(timeout=60)
            snap = await client.get_run("killed")
            events = [e async for e in client.iter_events("killed")]
        finally:
            await client.close()
    assert result["by"] == "typescript"
    assert snap.steps["resize"].attempt == 2
    started = [e.step_started.attempt for e in events if e.HasField("step_started")]
    assert started == [1, 2]
    assert [e.HasField("step_completed") for e in events].count(True) == 1
    assert runs_of(marks, "resize") == 2


async def test_a_typescript_client_watches_a_run_to_completion(
    cluster: tuple[str, int], app_dir: Path
) -> None:
    _, port = cluster
    address = f"127.0.0.1:{port}"
    marks = app_dir / "marks"
    with worker(app_dir, address), ts_worker(address, marks):
        proc = await asyncio.create_subprocess_exec(
            NODE,
            "--import",
            "tsx",
            "e2e/watch-run.ts",
            "ts-watched",
            cwd=REPO_ROOT_TS,
            env={**os.environ, "LEDGERFLOW_ADDRESS": address},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    statuses = [line["status"] for line in lines if "status" in line]
    assert statuses[-1] == pb.RUN_STATUS_COMPLETED
    assert pb.RUN_STATUS_WAITING in statuses  # it waited on the TypeScript step
    assert lines[-1] == {
        "result": {"name": "from-typescript.png", "width": 200, "by": "typescript"}
    }

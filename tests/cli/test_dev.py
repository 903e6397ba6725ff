"""``ledgerflow dev`` as a real process tree: coordinator in the process, worker children."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledgerflow.client import Client
from ledgerflow.v1 import ledger_pb2 as pb

BIN = Path(sys.executable).parent / "ledgerflow"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Dev:
    process: asyncio.subprocess.Process
    address: str
    banner: list[str]


async def _read_banner(process: asyncio.subprocess.Process) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("  stop"):
        raw = await process.stdout.readline()
        if not raw:
            raise AssertionError(f"ledgerflow dev ended before it was ready: {lines}")
        lines.append(raw.decode().rstrip("\n"))
    return lines


@asynccontextmanager
async def dev(*args: str, cwd: Path = ROOT) -> AsyncIterator[Dev]:
    """Run ``ledgerflow dev ARGS`` on free ports until it printed its banner; SIGTERM at the end."""
    process = await asyncio.create_subprocess_exec(
        str(BIN),
        "dev",
        "--listen",
        "127.0.0.1:0",
        *(args if "--no-dashboard" in args else ["--http-listen", "127.0.0.1:0", *args]),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        banner = await asyncio.wait_for(_read_banner(process), timeout=60)
        match = re.fullmatch(r"  coordinator  (\S+)", banner[1])
        assert match, banner
        yield Dev(process, match[1], banner)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=60)


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as page:
        return int(page.status)


def store_args(db_url: str, tmp_path: Path) -> list[str]:
    if db_url.startswith("sqlite"):
        return ["--db", str(tmp_path / "state" / "dev.db")]
    return ["--postgres", db_url]


async def test_dev_serves_the_examples_and_stops_cleanly_on_sigterm(
    db_url: str, tmp_path: Path
) -> None:
    async with dev(*store_args(db_url, tmp_path)) as running:
        assert running.banner[0].startswith("ledgerflow dev: ready in ")
        assert running.banner[3] == "  workers      examples"
        dashboard = re.fullmatch(r"  dashboard    (http://127\.0\.0\.1:\d+/)", running.banner[4])
        assert dashboard, running.banner
        # A thread: the blocking client must not stall this test's event loop.
        assert await asyncio.to_thread(http_status, dashboard[1]) == 200
        async with await Client.connect(running.address, connect_timeout=10) as client:
            handle = await client.start(
                "examples.order_saga", {"order_id": "d1", "step_seconds": 0}, run_id="d1"
            )
            result = await handle.result(timeout=60)
            pipeline = await client.start("examples.command_pipeline", {"stages": 1})
            built = await pipeline.result(timeout=60)
        running.process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(running.process.communicate(), timeout=60)
        assert running.process.returncode == 0, err
    assert result["tracking_number"] == "trk-d1"
    assert built["total"] == 0
    lines = err.decode().splitlines()
    assert lines[-1] == "ledgerflow dev: stopped"
    # The worker drained on the one SIGTERM it was sent (it runs in its own session).
    assert any("worker examples | " in line and "draining" in line for line in lines), lines
    if db_url.startswith("sqlite"):
        assert (tmp_path / "state" / "dev.db").is_file()


async def test_dev_without_examples_runs_the_coordinator_alone(tmp_path: Path) -> None:
    async with dev("--db", str(tmp_path / "dev.db"), "--no-dashboard", cwd=tmp_path) as running:
        assert running.banner[3] == "  workers      nothing (pass MODULE[:ATTR])"
        assert running.banner[4] == "  dashboard    off"
        async with await Client.connect(running.address, connect_timeout=10) as client:
            handle = await client.start("examples.order_saga", {"order_id": "x"})
            snap = await handle.describe()
        assert snap.status == pb.RUN_STATUS_QUEUED  # no worker serves it


async def test_a_worker_that_cannot_start_stops_dev_with_status_1(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(BIN),
        "dev",
        "no_such_module",
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(tmp_path / "dev.db"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    assert out == b""  # never ready
    lines = err.decode().splitlines()
    assert "worker no_such_module | ledgerflow: cannot import 'no_such_module'" in lines[0]
    assert "ledgerflow: the worker for no_such_module exited with status 2; stopping" in lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "--listen must be HOST:PORT, got 'nowhere'"),
        (["--no-worker", "app"], "--no-worker and MODULE arguments contradict each other"),
        (["--db", "x.db", "--postgres", "postgresql://h/d"], "not allowed with argument"),
        (["--postgres", "mysql://h/d"], "--postgres: "),
        (["--no-dashboard", "--http-listen", "127.0.0.1:0"], "contradict each other"),
        (["--http-listen", "nowhere"], "--http-listen"),
    ],
)
async def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(BIN),
        "dev",
        *args,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert out == b""
    assert len(err.splitlines()) == 1, err
    assert message in err.decode()

"""End to end: a command step through real ``ledgerflow server`` and ``worker`` processes.

The worker serves ``tests/e2e/e2e_command_app.py`` (copied into a temporary
directory and imported from there, as a user's module is); the command is a real
subprocess of the worker process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ledgerflow.client import Client
from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import BIN, LEASE, free_port, server

APP = Path(__file__).with_name("e2e_command_app.py")


@contextmanager
def command_worker(app_dir: Path, address: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``ledgerflow worker e2e_command_app`` from ``app_dir``."""
    proc = subprocess.Popen(
        [str(BIN), "worker", "e2e_command_app", "--address", address],
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


async def test_a_command_step_streams_its_channels_once_and_returns_its_exit_code(
    db_url: str, tmp_path: Path
) -> None:
    shutil.copy(APP, tmp_path / "e2e_command_app.py")
    port = free_port()
    address = f"127.0.0.1:{port}"
    with server(db_url, port, *LEASE), command_worker(tmp_path, address):
        client = await Client.connect(address)
        try:
            handle = await client.start("command", run_id="command-1")
            result = await handle.result(timeout=60)
            snap = await handle.describe()
            lines = [line async for line in client.tail_logs("command-1")]
        finally:
            await client.close()

    assert result == {"exit_code": 3, "outcome": "failed", "stdout_lines": 3, "stderr_lines": 2}
    by_channel: dict[str, list[str]] = {}
    for line in lines:
        by_channel.setdefault(line.channel, []).append(line.text)
    assert by_channel["step:script:stdout"] == ["out 0", "out 1", "out 2"]
    assert by_channel["step:script:stderr"] == ["err 0", "err 1"]
    assert [t.split(":")[0] for t in by_channel["step:script:lifecycle"]] == [
        "[info] run_prepared",
        "[info] worker_started",
        "[error] worker_exited",
        "[error] step_failed",
    ]
    # Seqs are gapless and strictly increasing: nothing was stored twice.
    seqs = [line.seq for line in lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    step = snap.steps["script"]
    assert step.status == pb.STEP_STATUS_COMPLETED
    assert step.checkpoint_count == 2
    assert step.last_checkpoint.type == pb.CHECKPOINT_TYPE_LOG_TAIL
    assert list(step.last_checkpoint.lines)[-1].startswith("[lifecycle] [error] step_failed")

"""Processes, waits and the consistency checks every fault-injection test ends with."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from ledgerflow.client import Client
from ledgerflow.coordinator.store import create_engine
from ledgerflow.coordinator.store._sql_runs import load_runs
from ledgerflow.v1 import journal_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import BIN

APP = Path(__file__).with_name("faults_app.py")

# A bug must fail a test, not hang it: every wait is bounded by this.
DEADLINE = 60.0

TERMINAL = {
    pb.RUN_STATUS_COMPLETED,
    pb.RUN_STATUS_FAILED,
    pb.RUN_STATUS_CANCELLED,
    pb.RUN_STATUS_TIMED_OUT,
}


@contextmanager
def worker(
    app_dir: Path, address: str, *extra: str, log: str = "worker.log"
) -> Iterator[subprocess.Popen[str]]:
    """Run ``ledgerflow worker faults_app`` from ``app_dir``, its log appended to ``log`` there."""
    log_file = (app_dir / log).open("a")
    proc = subprocess.Popen(
        [str(BIN), "worker", "faults_app", "--address", address, *extra],
        cwd=app_dir,
        text=True,
        stderr=log_file,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a test may leave it stopped
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log_file.close()


# ``ledgerflow server`` with the worker service's DEBUG lines on stderr (a duplicate
# batch is logged there), which the plain command does not configure.
_SERVER_WITH_DEBUG_LOG = """
import logging, sys
logging.basicConfig(format="%(name)s %(levelname)s %(message)s")
logging.getLogger("ledgerflow.coordinator.api._worker_service").setLevel(logging.DEBUG)
from ledgerflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


@contextmanager
def coordinator(
    db_url: str, port: int, *extra: str, log: Path, fault: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run ``ledgerflow server`` on ``port``, its stderr (with debug lines) appended to ``log``.

    ``fault`` sets ``LEDGERFLOW_FAULT`` (``crash-before-commit:N``, ``crash-after-commit:N``):
    the process then dies at that point of its N-th event batch.
    """
    env = {k: v for k, v in os.environ.items() if k != "LEDGERFLOW_FAULT"}
    if fault is not None:
        env["LEDGERFLOW_FAULT"] = fault
    log_file = log.open("a")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVER_WITH_DEBUG_LOG,
            "server",
            *("--listen", f"127.0.0.1:{port}", "--database-url", db_url, *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
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
        log_file.close()


def marks(directory: Path, name: str) -> int:
    """How often the step or compensation ``name`` ran (its marker lines)."""
    path = directory / name
    return len(path.read_text().splitlines()) if path.exists() else 0


async def until_marked(directory: Path, name: str, times: int) -> None:
    """Wait until ``name`` ran ``times`` times (a step in another process leaves nothing else)."""
    async with asyncio.timeout(DEADLINE):
        while marks(directory, name) < times:  # noqa: ASYNC110 (another process's file)
            await asyncio.sleep(0.01)


async def until_logged(path: Path, text: str) -> None:
    """Wait until a process's log file contains ``text``."""
    async with asyncio.timeout(DEADLINE):
        while not await asyncio.to_thread(_contains, path, text):  # noqa: ASYNC110 (a file)
            await asyncio.sleep(0.01)


def _contains(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def until(
    client: Client, run_id: str, predicate: Callable[[pb.RunSnapshot], bool]
) -> pb.RunSnapshot:
    """Wait (on the run's snapshot stream) for a snapshot satisfying ``predicate``."""
    async with asyncio.timeout(DEADLINE):
        async for snap in client.watch_run(run_id):
            if predicate(snap):
                return snap
    raise AssertionError(f"run {run_id} ended before the awaited state")


def step_running(step_id: str) -> Callable[[pb.RunSnapshot], bool]:
    """The predicate "``step_id`` is running"."""

    def check(snap: pb.RunSnapshot) -> bool:
        step = snap.steps.get(step_id)
        return step is not None and step.status == pb.STEP_STATUS_RUNNING

    return check


async def run_starts(client: Client, run_id: str) -> list[pb.RunStarted]:
    """The run's ``run_started`` events, in order."""
    return [e.run_started async for e in client.iter_events(run_id) if e.HasField("run_started")]


async def until_invocation(client: Client, run_id: str, invocation: int) -> pb.RunStarted:
    """Wait (on the snapshot stream) until the ledger has a ``run_started`` of ``invocation``."""
    async with asyncio.timeout(DEADLINE):
        async for _ in client.watch_run(run_id):
            for started in await run_starts(client, run_id):
                if started.invocation == invocation:
                    return started
    raise AssertionError(f"run {run_id} ended before invocation {invocation}")


async def results(
    client: Client, run_ids: Sequence[str], *, deadline: float = DEADLINE
) -> list[pb.RunSnapshot]:
    """Wait (at most ``deadline`` seconds) for every run to end; return their terminal snapshots."""

    async def one(run_id: str) -> pb.RunSnapshot:
        async for snap in client.watch_run(run_id):
            if snap.status in TERMINAL:
                return snap
        raise AssertionError(f"the watch of {run_id} ended early")

    async with asyncio.timeout(deadline):
        return list(await asyncio.gather(*(one(r) for r in run_ids)))


@asynccontextmanager
async def connected(address: str) -> AsyncIterator[Client]:
    """A client for the duration of the block."""
    client = await Client.connect(address)
    try:
        yield client
    finally:
        await client.close()


async def verify(db_url: str) -> str:
    """``ledgerflow admin verify``: every ledger gapless and equal to its re-reduction."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN), "admin", "verify", "--database-url", db_url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def journal(db_url: str, run_id: str) -> journal_pb2.JournalSlice:
    """The run's stored journal (what a replaying worker gets)."""
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return (await load_runs(conn, [run_id]))[run_id].journal
    finally:
        await engine.dispose()


async def assert_sound(
    client: Client, db_url: str, run_ids: Sequence[str]
) -> dict[str, list[pb.LedgerEvent]]:
    """The checks every fault test ends with; returns each run's ledger.

    ``admin verify`` (gapless seqs, snapshots and journals equal a re-reduction);
    every run terminal; every step completed exactly once in the ledger, every
    started compensation finished exactly once; the snapshot's log count equals
    the lines TailLogs returns, each seq once.
    """
    await verify(db_url)
    ledgers = {}
    for run_id in run_ids:
        events = [e async for e in client.iter_events(run_id)]
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), run_id
        snap = await client.get_run(run_id)
        assert snap.status in TERMINAL, (run_id, pb.RunStatus.Name(snap.status))
        completed = Counter(
            e.step_completed.step_id for e in events if e.HasField("step_completed")
        )
        assert all(n == 1 for n in completed.values()), (run_id, completed)
        done = {s for s, step in snap.steps.items() if step.status == pb.STEP_STATUS_COMPLETED}
        assert set(completed) == done, (run_id, completed, done)
        compensated = Counter(
            e.compensation_completed.step_id for e in events if e.HasField("compensation_completed")
        )
        assert all(n == 1 for n in compensated.values()), (run_id, compensated)
        lines = [line async for line in client.tail_logs(run_id)]
        assert [line.seq for line in lines] == list(range(1, len(lines) + 1)), run_id
        assert snap.total_log_count == len(lines), run_id
        ledgers[run_id] = events
    return ledgers

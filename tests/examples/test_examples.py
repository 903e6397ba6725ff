"""Every example, end to end: a real ``ledgerflow server`` and ``ledgerflow worker``.

The worker serves the example's module from the repository root (as a user runs
``ledgerflow worker examples.order_saga`` there); the run is started with the
example's own starter (``python -m examples.<name>``), whose output is the plain
line view of ``run start --watch`` (stdout is a pipe here). What the run did is then
read back from the coordinator: snapshot, ledger events, logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ledgerflow.client import Client
from ledgerflow.ledger import payload_value
from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import BIN, LEASE, free_port, server

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def example_worker(module: str, address: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``ledgerflow worker MODULE`` from the repository root."""
    proc = subprocess.Popen(
        [str(BIN), "worker", module, "--address", address],
        cwd=ROOT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


async def starter(module: str, *args: str) -> tuple[int, list[str], str]:
    """``python -m MODULE ARGS`` from the repository root: (status, stdout lines, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


@pytest.fixture
async def address(tmp_path: Path) -> AsyncIterator[str]:
    """A coordinator on a fresh SQLite file."""
    port = free_port()
    with server(f"sqlite+aiosqlite:///{tmp_path / 'examples.db'}", port, *LEASE):
        yield f"127.0.0.1:{port}"


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    async with await Client.connect(address, connect_timeout=10) as c:
        yield c


def subjects(lines: list[str], kind: str) -> list[str]:
    """The ``<subject>  <what>`` part of the watch lines about ``kind`` (run, step, ...)."""
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  "
    return [
        line.split("  ", 1)[1] for line in lines if re.match(stamp + re.escape(kind) + r"\b", line)
    ]


# --- order saga ------------------------------------------------------------------------------


async def test_order_saga_completes_and_prints_its_receipt(address: str, client: Client) -> None:
    with example_worker("examples.order_saga", address):
        code, lines, err = await starter(
            "examples.order_saga", "--address", address, "--order-id", "o1", "--step-seconds", "0"
        )
    assert code == 0, err
    assert lines[0] == "run order-o1 created"
    assert lines[-1] == (
        'result  {"order_id":"o1","reservation_id":"res-o1","charge_id":"ch-o1",'
        '"tracking_number":"trk-o1"}'
    )
    # A watcher may be sent only the latest snapshot when several changes come at once,
    # so "running" lines can be skipped; each step's completion is always shown, in order.
    completed = [s.split("  ")[0] for s in subjects(lines, "step") if "  completed" in s]
    assert completed == ["step reserve_inventory", "step charge_card", "step ship"]
    assert "log  [info] shipped" in subjects(lines, "log")
    snap = await client.get_run("order-o1")
    assert snap.status == pb.RUN_STATUS_COMPLETED
    assert list(snap.ordered_step_ids) == ["reserve_inventory", "charge_card", "ship"]
    assert all(s.status == pb.STEP_STATUS_COMPLETED for s in snap.steps.values())
    # Progress reported inside each step reached its total.
    progress = [snap.steps[step_id].progress for step_id in snap.ordered_step_ids]
    assert [(p.completed, p.total) for p in progress] == [
        (2, 2),
        (3, 3),
        (4, 4),
    ]
    assert not snap.compensations


async def test_order_saga_failing_at_ship_compensates_in_reverse(
    address: str, client: Client
) -> None:
    with example_worker("examples.order_saga", address):
        code, lines, err = await starter(
            "examples.order_saga",
            "--address",
            address,
            "--order-id",
            "o2",
            "--step-seconds",
            "0",
            "--fail-at",
            "ship",
        )
    assert code == 1, err  # the run did not complete: the outcome, not an error
    assert err == ""
    # The line view shows the compensations, last completed step first.
    assert [s for s in subjects(lines, "compensate") if s.endswith("completed")] == [
        "compensate charge_card  completed",
        "compensate reserve_inventory  completed",
    ]
    assert re.fullmatch(
        r"failed  StepFailedError: .*CarrierUnavailableError: no carrier accepted the parcel"
        r"  \(compensated\)",
        lines[-1],
    ), lines[-1]

    # The ledger holds the same order.
    events = [e async for e in client.iter_events("order-o2")]
    compensation_events = [
        (e.WhichOneof("payload"), getattr(e, e.WhichOneof("payload") or "").step_id)
        for e in events
        if (e.WhichOneof("payload") or "").startswith("compensation_")
    ]
    assert compensation_events == [
        ("compensation_started", "charge_card"),
        ("compensation_completed", "charge_card"),
        ("compensation_started", "reserve_inventory"),
        ("compensation_completed", "reserve_inventory"),
    ]
    snap = await client.get_run("order-o2")
    assert snap.status == pb.RUN_STATUS_FAILED
    assert snap.compensation == pb.COMPENSATION_OUTCOME_COMPENSATED
    assert [(c.step_id, c.status) for c in snap.compensations] == [
        ("charge_card", pb.COMPENSATION_STATUS_COMPLETED),
        ("reserve_inventory", pb.COMPENSATION_STATUS_COMPLETED),
    ]
    assert snap.steps["ship"].status == pb.STEP_STATUS_FAILED
    assert snap.steps["ship"].error.type == "CarrierUnavailableError"
    # The compensation functions ran (each logs what it undid).
    texts = [line.text async for line in client.tail_logs("order-o2")]
    assert [t for t in texts if t.startswith(("[info] refunded", "[info] released"))] == [
        "[info] refunded 4200 cents (ch-o2)",
        "[info] released reservation res-o2",
    ]


# --- command pipeline ------------------------------------------------------------------------


async def test_command_pipeline_streams_both_channels_checkpoints_and_returns_the_build(
    address: str, client: Client, tmp_path: Path
) -> None:
    workdir = tmp_path / "build"
    with example_worker("examples.command_pipeline", address):
        code, lines, err = await starter(
            "examples.command_pipeline", "--address", address, "--workdir", str(workdir)
        )
    assert code == 0, err
    run_id = re.fullmatch(r"run (\S+) created", lines[0])
    assert run_id, lines[0]
    snap = await client.get_run(run_id[1])
    assert snap.status == pb.RUN_STATUS_COMPLETED
    assert list(snap.ordered_step_ids) == ["workspace", "generate", "compile", "run"]

    result = payload_value(snap.result)
    assert result["total"] == 0 + 1 + 4
    assert result["summary"] == "total 5"
    assert result["stdout_lines"] == 4  # three stages and the total
    assert result["stderr_lines"] == 3
    assert result["workdir"] == str(workdir)
    assert any(uri.endswith("main.py") for uri in result["artifacts"]), result["artifacts"]

    by_channel: dict[str, list[str]] = {}
    async for line in client.tail_logs(run_id[1]):
        by_channel.setdefault(line.channel, []).append(line.text)
    assert by_channel["step:generate:stdout"] == [
        "wrote stage_0.py",
        "wrote stage_1.py",
        "wrote stage_2.py",
        "wrote main.py",
    ]
    assert by_channel["step:run:stdout"] == [
        "stage_0 -> 0",
        "stage_1 -> 1",
        "stage_2 -> 4",
        "total 5",
    ]
    assert by_channel["step:run:stderr"] == [f"stage_{i}: checked" for i in range(3)]
    assert any("stage_1.py" in text for text in by_channel["step:compile:stdout"])

    # Each command step: a summary checkpoint at the start, a log tail at the end.
    for step_id in ("generate", "compile", "run"):
        step = snap.steps[step_id]
        assert step.kind == "command"
        assert step.checkpoint_count == 2, step_id
        assert step.last_checkpoint.type == pb.CHECKPOINT_TYPE_LOG_TAIL
    tail = list(snap.steps["run"].last_checkpoint.lines)
    assert "[stdout] total 5" in tail
    assert "[stderr] stage_2: checked" in tail

    # The build really happened on disk: sources generated and byte-compiled.
    assert sorted(p.name for p in workdir.glob("stage_*.py")) == [
        "stage_0.py",
        "stage_1.py",
        "stage_2.py",
    ]
    assert list((workdir / "__pycache__").glob("stage_0.*.pyc"))


# --- approval --------------------------------------------------------------------------------


async def waitpoint_resolutions(client: Client, run_id: str) -> list[pb.WaitpointResolved]:
    """The run's ``waitpoint_resolved`` events, in ledger order."""
    return [
        e.waitpoint_resolved
        async for e in client.iter_events(run_id)
        if e.HasField("waitpoint_resolved")
    ]


async def test_approval_approved_publishes_after_a_durable_sleep_between_attempts(
    address: str, client: Client
) -> None:
    with example_worker("examples.approval", address):
        code, lines, err = await starter(
            "examples.approval",
            "--address",
            address,
            "--report-id",
            "r1",
            "--approve-after",
            "0",
            "--retry-delay",
            "0.1",
        )
    assert code == 0, err
    assert lines[0] == "run approval-r1 created"
    assert lines[-1] == (
        'result  {"report_id":"r1","url":"https://reports.example/r1/'
        + hashlib.sha256(b"r1:Quarterly ledger report").hexdigest()[:12]
        + '","approved_by":"ana","attempts":2}'
    )
    snap = await client.get_run("approval-r1")
    assert snap.status == pb.RUN_STATUS_COMPLETED
    # Each publish attempt is its own step; the first failed as the input asked.
    assert list(snap.ordered_step_ids) == ["build_report", "publish", "publish#2"]
    assert snap.steps["publish"].status == pb.STEP_STATUS_FAILED
    assert snap.steps["publish"].error.type == "PublishUnavailableError"
    assert snap.steps["publish#2"].status == pb.STEP_STATUS_COMPLETED
    assert not snap.open_waitpoints

    # The ledger: the approval signal resolved the wait, then the timer between attempts.
    resolved = await waitpoint_resolutions(client, "approval-r1")
    assert [(r.waitpoint_id.split("#")[0], r.kind) for r in resolved] == [
        ("signal:approve", pb.WAITPOINT_KIND_SIGNAL),
        ("sleep", pb.WAITPOINT_KIND_TIMER),
    ]
    signal_wait, sleep_wait = resolved
    assert payload_value(signal_wait.payload) == {"approved": True, "by": "ana"}
    assert not signal_wait.timed_out
    assert re.fullmatch(r"sleep#\d+", sleep_wait.waitpoint_id), sleep_wait.waitpoint_id

    texts = [line.text async for line in client.tail_logs("approval-r1")]
    assert "[info] approved by ana" in texts
    assert any(t.endswith("publish attempt 1 failed; retrying in 0.1s") for t in texts), texts
    assert any(t.startswith("[info] published https://reports.example/r1/") for t in texts)


async def test_approval_without_a_decision_expires_and_withdraws_the_draft(
    address: str, client: Client
) -> None:
    with example_worker("examples.approval", address):
        code, lines, err = await starter(
            "examples.approval", "--address", address, "--report-id", "r2", "--timeout", "0.5"
        )
    assert code == 1, err  # not published: the run's outcome, not an error
    assert err == ""
    assert lines[-1] == (
        "failed  ApprovalExpiredError: no decision on r2 within 0.5s  (compensated)"
    ), lines[-1]
    snap = await client.get_run("approval-r2")
    assert snap.status == pb.RUN_STATUS_FAILED
    assert snap.error.type == "ApprovalExpiredError"
    assert list(snap.ordered_step_ids) == ["build_report"]  # nothing was published
    assert [(c.step_id, c.status) for c in snap.compensations] == [
        ("build_report", pb.COMPENSATION_STATUS_COMPLETED)
    ]
    resolved = await waitpoint_resolutions(client, "approval-r2")
    assert [(r.waitpoint_id, r.timed_out) for r in resolved] == [("signal:approve#1", True)]
    texts = [line.text async for line in client.tail_logs("approval-r2")]
    assert "[info] withdrew draft r2" in texts


async def test_approval_rejected_ends_the_run_without_publishing(
    address: str, client: Client
) -> None:
    with example_worker("examples.approval", address):
        code, lines, err = await starter(
            "examples.approval", "--address", address, "--report-id", "r3", "--reject"
        )
    assert code == 1, err
    assert lines[-1] == "failed  ApprovalRejectedError: ana rejected r3  (compensated)", lines[-1]
    snap = await client.get_run("approval-r3")
    assert list(snap.ordered_step_ids) == ["build_report"]
    assert snap.compensation == pb.COMPENSATION_OUTCOME_COMPENSATED


# --- polyglot --------------------------------------------------------------------------------

TS_SDK = ROOT / "sdk" / "typescript"
NODE = shutil.which("node") or "node"


@contextmanager
def typescript_worker(address: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``examples/polyglot/worker.ts`` as its docs say: Node with tsx, from the TS SDK."""
    proc = subprocess.Popen(
        [NODE, "--import", "tsx", "../../examples/polyglot/worker.ts"],
        cwd=TS_SDK,
        env={**os.environ, "LEDGERFLOW_ADDRESS": address},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # EOF (a crashed worker) returns "" here, so this cannot hang on a dead process.
        assert proc.stdout.readline().strip() == "polyglot worker ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


async def test_polyglot_runs_its_step_on_the_typescript_worker(
    address: str, client: Client
) -> None:
    with example_worker("examples.polyglot", address), typescript_worker(address):
        code, lines, err = await starter(
            "examples.polyglot",
            "--address",
            address,
            "--run-id",
            "poly-1",
            "--version",
            "2.1.0",
            "--change",
            "timers",
            "--change",
            "signals",
        )
    assert code == 0, err
    assert lines[0] == "run poly-1 created"
    snap = await client.get_run("poly-1")
    assert snap.status == pb.RUN_STATUS_COMPLETED
    result = payload_value(snap.result)
    markdown = "# Release 2.1.0\n\n- timers\n- signals\n"
    assert result["markdown"] == markdown
    assert result["sha256"] == hashlib.sha256(markdown.encode()).hexdigest()
    assert result["rendered_by"].startswith("typescript (node v")

    step = snap.steps["render_notes"]
    assert (step.status, step.worker_kind) == (pb.STEP_STATUS_COMPLETED, "polyglot-ts")
    assert (step.progress.completed, step.progress.total) == (2, 2)
    logs = [(line.channel, line.text) async for line in client.tail_logs("poly-1")]
    ts_lines = [text for channel, text in logs if channel == "step:render_notes:log"]
    assert ts_lines[0] == "rendering 2 changes for 2.1.0"
    assert ts_lines[1].startswith(f"rendered {len(markdown)} bytes, sha256 ")
    assert ("workflow", "[info] asking typescript to render 2 changes") in logs


def test_polyglot_worker_type_checks() -> None:
    tsc = TS_SDK / "node_modules" / ".bin" / "tsc"
    done = subprocess.run(
        [str(tsc), "--noEmit", "-p", "examples/polyglot"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

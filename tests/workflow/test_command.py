"""Command steps: ``ctx.run_command`` with real subprocesses, through the real ledger core.

Commands are ``sys.executable -c ...``; each run appends a line to a marker file, so
a test can count how often a command really ran. The harness's MemoryLedger runs
every ``log_appended`` through ``ingest_log_batch``, so the stored lines are what a
coordinator would store, positional deduplication included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from ledgerflow import workflow
from ledgerflow.v1 import journal_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.workflow._command import MAX_BATCH_LINES
from tests.workflow.harness import MemoryLedger, Runner, SinkRefusedError, outcome_name

PY = sys.executable


def py(code: str) -> list[str]:
    """argv running ``code`` in a fresh interpreter."""
    return [PY, "-c", code]


def marking(marks: Path, code: str) -> list[str]:
    """argv that appends one line to ``marks`` (a run counter), then runs ``code``."""
    prefix = f"open({str(marks)!r}, 'a').write('ran\\n')\n"
    return py(prefix + code)


def runs(marks: Path) -> int:
    return len(marks.read_text().splitlines()) if marks.exists() else 0


def channel_lines(ledger: MemoryLedger, channel: str) -> list[str]:
    return [text for ch, text in ledger.lines if ch == channel]


def offsets(ledger: MemoryLedger, channel: str) -> list[tuple[int, int]]:
    """(channel_offset, line count) of each committed batch of ``channel``."""
    return [
        (e.log_appended.channel_offset, len(e.log_appended.lines))
        for e in ledger.of_type("log_appended")
        if e.log_appended.channel == channel
    ]


def _resolved(path: Path) -> str:
    return str(path.resolve())


def decoded_output(result: Any) -> Any:
    return json.loads(result.output.data)


# --- streaming ------------------------------------------------------------------------------


async def test_stdout_and_stderr_go_to_their_own_positional_channels() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> workflow.CommandResult:
        return await ctx.run_command(
            py(
                "import sys\n"
                "for i in range(3): print(f'out {i}', flush=True)\n"
                "for i in range(2): print(f'err {i}', file=sys.stderr, flush=True)\n"
            ),
            name="build",
        )

    runner = Runner(body)
    result = await runner.run()
    assert outcome_name(result) == "completed"
    ledger = runner.ledger
    assert channel_lines(ledger, "step:build:stdout") == ["out 0", "out 1", "out 2"]
    assert channel_lines(ledger, "step:build:stderr") == ["err 0", "err 1"]
    # Every batch carries the count of the channel's lines before it.
    for channel in ("step:build:stdout", "step:build:stderr", "step:build:lifecycle"):
        seen = 0
        for offset, count in offsets(ledger, channel):
            assert offset == seen
            seen += count
    lifecycle = channel_lines(ledger, "step:build:lifecycle")
    assert [line.split(":")[0] for line in lifecycle] == [
        "[info] run_prepared",
        "[info] worker_started",
        "[info] worker_exited",
        "[info] step_completed",
    ]
    out = decoded_output(result)
    assert out["outcome"] == "completed"
    assert out["exit_code"] == 0
    assert out["metrics"]["stdout_line_count"] == 3
    assert out["metrics"]["stderr_line_count"] == 2
    assert out["metrics"]["lifecycle_event_count"] == 4
    assert out["metrics"]["checkpoint_count"] == 2
    started = ledger.of_type("step_started")[0].step_started
    assert (started.step_id, started.kind) == ("build", "command")
    assert ledger.of_type("step_completed")[0].step_completed.kind == "command"


async def test_a_chatty_command_streams_in_batches_and_keeps_every_line_once() -> None:
    n = 2 * MAX_BATCH_LINES + 10

    @workflow.defn
    async def body(ctx: workflow.Context) -> int:
        result = await ctx.run_command(
            py(f"for i in range({n}): print(f'line {{i}}')"), name="chatty"
        )
        return result.metrics.stdout_line_count

    runner = Runner(body)
    result = await runner.run()
    assert decoded_output(result) == n
    assert channel_lines(runner.ledger, "step:chatty:stdout") == [f"line {i}" for i in range(n)]
    batches = offsets(runner.ledger, "step:chatty:stdout")
    assert len(batches) >= 3  # batched, not one event per line, and not one for all
    assert all(count <= MAX_BATCH_LINES for _, count in batches)


async def test_the_step_name_defaults_to_the_program_and_repeats_are_numbered() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> list[int]:
        a = await ctx.run_command(py("print('one')"))
        b = await ctx.run_command(py("print('two')"))
        return [a.exit_code, b.exit_code]

    runner = Runner(body)
    await runner.run()
    ids = [e.step_started.step_id for e in runner.ledger.of_type("step_started")]
    name = Path(PY).name
    assert ids == [name, f"{name}#2"]
    assert channel_lines(runner.ledger, f"step:{name}#2:stdout") == ["two"]


async def test_argv_must_be_a_sequence_of_arguments() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.run_command("echo hi")

    result = await Runner(body).run()
    assert outcome_name(result) == "failed"
    assert result.error.type == "TypeError"


async def test_cwd_and_env_reach_the_command(tmp_path: Path) -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> workflow.CommandResult:
        return await ctx.run_command(
            py(
                "import os\n"
                "print(os.getcwd())\n"
                "print(os.environ['GREETING'])\n"
                "print(os.environ['LEDGERFLOW_STEP_ID'], os.environ['LEDGERFLOW_ATTEMPT'])\n"
                "print('PATH' in os.environ)\n"
            ),
            name="env",
            cwd=tmp_path,
            env={"GREETING": "hello"},
        )

    runner = Runner(body)
    await runner.run()
    assert channel_lines(runner.ledger, "step:env:stdout") == [
        _resolved(tmp_path),
        "hello",
        "env 1",
        "True",
    ]


# --- outcomes -------------------------------------------------------------------------------


async def test_a_non_zero_exit_fails_the_step_with_the_envelope_in_the_error() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> dict[str, Any]:
        try:
            await ctx.run_command(py("import sys; print('boom'); sys.exit(3)"), name="bad")
        except workflow.StepFailedError as err:
            return {
                "type": err.error_type,
                "code": err.error.code,
                "details": json.loads(err.error.details.data),
            }
        return {}

    runner = Runner(body)
    out = decoded_output(await runner.run())
    assert out["type"] == "CommandFailedError"
    assert out["code"] == "COMMAND_FAILED"
    assert (out["details"]["outcome"], out["details"]["exit_code"]) == ("failed", 3)
    failed = runner.ledger.of_type("step_failed")[0].step_failed
    assert (failed.kind, failed.will_retry) == ("command", False)
    lifecycle = channel_lines(runner.ledger, "step:bad:lifecycle")
    assert lifecycle[-2] == "[error] worker_exited: exited with code 3 (outcome failed)"
    assert lifecycle[-1].startswith("[error] step_failed: ")


async def test_check_false_returns_the_failed_outcome() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> workflow.CommandResult:
        return await ctx.run_command(py("import sys; sys.exit(5)"), name="lint", check=False)

    runner = Runner(body)
    out = decoded_output(await runner.run())
    assert (out["outcome"], out["exit_code"]) == ("failed", 5)
    assert runner.ledger.of_type("step_completed")


async def test_a_command_that_cannot_start_fails_the_step() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        try:
            await ctx.run_command(["/nonexistent/program"], name="missing", check=False)
        except workflow.StepFailedError as err:
            return err.error_type
        return "ran"

    runner = Runner(body)
    assert decoded_output(await runner.run()) == "FileNotFoundError"


async def test_a_failed_command_is_retried_as_a_new_attempt_on_new_channels(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"

    @workflow.defn
    async def body(ctx: workflow.Context) -> int:
        result = await ctx.run_command(
            marking(
                marks,
                "import sys\n"
                f"n = len(open({str(marks)!r}).read().splitlines())\n"
                "print(f'try {n}')\n"
                "sys.exit(0 if n == 2 else 1)\n",
            ),
            name="flaky",
            retry=workflow.RetryPolicy(max_attempts=2),
        )
        return result.attempt

    runner = Runner(body)
    assert decoded_output(await runner.run()) == 2
    assert runs(marks) == 2
    assert channel_lines(runner.ledger, "step:flaky:stdout") == ["try 1"]
    assert channel_lines(runner.ledger, "step:flaky:stdout@2") == ["try 2"]
    assert "LEDGERFLOW" not in str(channel_lines(runner.ledger, "step:flaky:stderr"))


async def test_an_exit_code_can_mean_blocked_needs_human() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> workflow.CommandResult:
        return await ctx.run_command(
            py("import sys; print('need approval'); sys.exit(42)"),
            name="deploy",
            blocked_exit_codes=[42],
        )

    runner = Runner(body)
    out = decoded_output(await runner.run())
    assert (out["outcome"], out["exit_code"], out["needs_human"]) == ("blocked", 42, True)
    lifecycle = channel_lines(runner.ledger, "step:deploy:lifecycle")
    assert lifecycle[-1].startswith("[warn] step_blocked: ")


async def test_the_result_file_envelope_says_blocked_with_summary_and_artifacts(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.html"
    envelope = {
        "outcome": "blocked",
        "summary": "waiting for a reviewer",
        "artifacts": [{"name": "report", "kind": "report", "path": str(report)}],
        "suggested_followups": ["approve the release"],
    }

    @workflow.defn
    async def body(ctx: workflow.Context) -> workflow.CommandResult:
        result = await ctx.run_command(
            py(
                "import json, os\n"
                f"open({str(report)!r}, 'w').write('<p>')\n"
                f"json.dump({envelope!r}, open(os.environ['{workflow.RESULT_FILE_ENV}'], 'w'))\n"
            ),
            name="review",
        )
        assert isinstance(result, workflow.CommandResult)
        assert result.blocked
        assert not result.ok
        return result

    runner = Runner(body)
    out = decoded_output(await runner.run())
    assert out["outcome"] == "blocked"
    assert out["exit_code"] == 0
    assert out["needs_human"] is True
    assert out["summary"] == "waiting for a reviewer"
    assert out["artifacts"] == [
        {"name": "report", "kind": "report", "uri": str(report), "description": ""}
    ]
    assert out["suggested_followups"] == ["approve the release"]


async def test_declared_artifacts_are_reported_when_they_exist(tmp_path: Path) -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> list[workflow.CommandArtifact]:
        result = await ctx.run_command(
            py("import os; os.mkdir('dist'); open('dist/app.whl', 'w').write('x')"),
            name="package",
            cwd=tmp_path,
            artifacts=["dist/app.whl", "dist", "missing.txt"],
        )
        return list(result.artifacts)

    out = decoded_output(await Runner(body).run())
    assert [(a["name"], a["kind"], a["uri"]) for a in out] == [
        ("app.whl", "file", str(tmp_path / "dist" / "app.whl")),
        ("dist", "directory", str(tmp_path / "dist")),
    ]


# --- timeouts -------------------------------------------------------------------------------


def _dead(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return True
    # Reparented to a PID 1 that may never reap it: a zombie is dead too.
    return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"
    )

    @workflow.defn
    async def body(ctx: workflow.Context) -> dict[str, str]:
        try:
            await ctx.run_command(py(code), name="hang", timeout=3)
        except workflow.StepFailedError as err:
            return {"type": err.error_type, "code": err.error.code}
        return {}

    runner = Runner(body)
    out = decoded_output(await runner.run())
    assert out == {"type": "TimeoutError", "code": "STEP_TIMEOUT"}
    assert _dead(int(pidfile.read_text()))
    ledger = runner.ledger
    assert channel_lines(ledger, "step:hang:stdout") == ["started"]
    lifecycle = channel_lines(ledger, "step:hang:lifecycle")
    assert lifecycle[-1] == (
        "[error] worker_exited: killed the process group: the step's timeout of 3s expired"
    )
    tail = ledger.of_type("checkpoint_recorded")[-1].checkpoint_recorded
    assert tail.type == pb.CHECKPOINT_TYPE_LOG_TAIL
    assert tail.summary == "Captured combined log tail after timeout for hang."


# --- checkpoints ----------------------------------------------------------------------------


async def test_a_summary_then_a_log_tail_of_the_last_lines_in_seq_order() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.run_command(
            py(
                "import sys\n"
                "for i in range(4):\n"
                "    print(f'out {i}', flush=True)\n"
                "    print(f'err {i}', file=sys.stderr, flush=True)\n"
            ),
            name="mixed",
            log_tail_lines=5,
            summary="building the thing",
        )

    runner = Runner(body)
    await runner.run()
    ledger = runner.ledger
    checkpoints = [e.checkpoint_recorded for e in ledger.of_type("checkpoint_recorded")]
    assert [(c.checkpoint_seq, c.type) for c in checkpoints] == [
        (1, pb.CHECKPOINT_TYPE_SUMMARY),
        (2, pb.CHECKPOINT_TYPE_LOG_TAIL),
    ]
    assert checkpoints[0].summary == "building the thing"
    tail = checkpoints[1]
    assert tail.summary == "Captured combined log tail after completed for mixed."
    assert tail.truncated
    # The tail is the step's last stored lines across its channels, ordered by seq.
    rendered = [
        f"[{channel.rsplit(':', 1)[1]}] {text}"
        for channel, text in ledger.lines
        if channel.startswith("step:mixed:")
    ]
    assert list(tail.lines) == rendered[-5:]
    assert tail.lines[-1].startswith("[lifecycle] [info] step_completed")
    snap = ledger.snapshot.steps["mixed"]
    assert snap.checkpoint_count == 2
    assert snap.last_checkpoint.type == pb.CHECKPOINT_TYPE_LOG_TAIL


async def test_checkpoints_can_be_turned_off() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> int:
        result = await ctx.run_command(py("print('x')"), name="quiet", checkpoints=False)
        return result.metrics.checkpoint_count

    runner = Runner(body)
    assert decoded_output(await runner.run()) == 0
    assert not runner.ledger.of_type("checkpoint_recorded")


# --- replay and crashes ---------------------------------------------------------------------


def _counting_body(marks: Path, lines: int) -> workflow.WorkflowDefinition[Any, Any]:
    @workflow.defn
    async def body(ctx: workflow.Context) -> dict[str, Any]:
        ctx.log.info("before")
        result = await ctx.run_command(
            marking(
                marks,
                "import sys\n"
                f"for i in range({lines}): print(f'line {{i}}')\n"
                "print('warning', file=sys.stderr)\n",
            ),
            name="job",
        )
        ctx.log.info("after")
        return {"exit": result.exit_code, "stdout": result.metrics.stdout_line_count}

    return body


async def test_replay_returns_the_recorded_result_without_running_the_command(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    runner = Runner(_counting_body(marks, 3))
    first = await runner.run()
    committed = len(runner.ledger.events)
    again = await runner.run()  # a new task replaying the whole journal
    assert decoded_output(again) == decoded_output(first) == {"exit": 0, "stdout": 3}
    assert runs(marks) == 1
    assert len(runner.ledger.events) == committed  # replay appended nothing
    assert runner.ledger.body_lines() == ["[info] before", "[info] after"]


# Appends: 0 = the step's start, 1 = "worker_started", 2 = the first full batch of
# stdout, 3 = the next one. Failing at 2 after its commit, or at 3 before it, leaves
# the first batch stored and the rest lost, so the rerun overlaps what is stored.
@pytest.mark.parametrize(("mode", "fail_at"), [("after", 2), ("before", 3)])
async def test_a_crash_mid_command_reruns_it_and_stores_each_line_once(
    tmp_path: Path, mode: Literal["before", "after"], fail_at: int
) -> None:
    marks = tmp_path / "marks"
    n = 2 * MAX_BATCH_LINES + 10
    ledger = MemoryLedger(fail_at=fail_at, fail_mode=mode)
    runner = Runner(_counting_body(marks, n), ledger=ledger)
    with pytest.raises(SinkRefusedError):
        await runner.run()
    # The worker died with the command's step started, part of its output stored.
    assert "job" in ledger.journal.pending_steps
    stored_before = channel_lines(ledger, "step:job:stdout")
    assert 0 < len(stored_before) < n
    assert stored_before == [f"line {i}" for i in range(len(stored_before))]

    ledger.healthy()
    result = await runner.run()
    assert decoded_output(result) == {"exit": 0, "stdout": n}
    assert runs(marks) == 2  # the in-flight command ran again...
    assert ledger.journal.step_results["job"].attempt == 1  # ...under the same attempt
    assert ledger.journal.step_results["job"].status == journal_pb2.STEP_RESULT_STATUS_COMPLETED
    # ...and every line is stored exactly once, in order.
    assert channel_lines(ledger, "step:job:stdout") == [f"line {i}" for i in range(n)]
    assert channel_lines(ledger, "step:job:stderr") == ["warning"]
    assert [t.split(":")[0] for t in channel_lines(ledger, "step:job:lifecycle")] == [
        "[info] run_prepared",
        "[info] worker_started",
        "[info] worker_exited",
        "[info] step_completed",
    ]
    assert ledger.body_lines() == ["[info] before", "[info] after"]

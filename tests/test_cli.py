"""The ``ledgerflow`` command line, run as a real subprocess through its console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "ledgerflow"


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


REFERENCE_LINES = [
    {
        "type": "run.created",
        "runId": "r1",
        "occurredAt": 1000,
        "source": "worker",
        "playName": "demo",
    },
    {"type": "run.created", "runId": "r2", "occurredAt": 1001, "source": "temporal"},
    {"type": "step.started", "runId": "r1", "occurredAt": 1100, "source": "worker", "stepId": "a"},
    {"type": "run.completed", "runId": "r1", "occurredAt": 1300, "source": "worker", "result": [1]},
]


def test_reduce_reference_prints_one_snapshot_per_run_in_first_seen_order(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in REFERENCE_LINES) + "\n\n")
    proc = cli("ledger", "reduce", str(path), "--format", "reference")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [s["runId"] for s in out] == ["r1", "r2"]
    assert out[0]["status"] == "completed"
    assert out[0]["durationMs"] == 200
    assert out[0]["result"] == [1]
    assert out[0]["orderedStepIds"] == ["a"]
    assert out[1]["status"] == "unknown"


def test_reduce_proto_format_from_stdin() -> None:
    lines = [
        {
            "runId": "p",
            "eventTime": "2026-01-01T00:00:00Z",
            "runCreated": {"workflowName": "wf", "status": "RUN_STATUS_QUEUED"},
        },
        {"runId": "p", "eventTime": "2026-01-01T00:00:01Z", "stepStarted": {"stepId": "s"}},
    ]
    proc = cli("ledger", "reduce", "--format", "proto", stdin="\n".join(map(json.dumps, lines)))
    assert proc.returncode == 0, proc.stderr
    (snap,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert snap["runId"] == "p"
    assert snap["status"] == "RUN_STATUS_RUNNING"
    assert snap["workflowName"] == "wf"
    assert snap["steps"]["s"]["status"] == "STEP_STATUS_RUNNING"


@pytest.mark.parametrize(
    ("fmt", "line", "message"),
    [
        ("reference", "{not json", "line 2: invalid JSON"),
        (
            "reference",
            '{"type": "run.bogus", "runId": "r", "occurredAt": 1, "source": "worker"}',
            "line 2: type: unknown event type 'run.bogus'",
        ),
        (
            "reference",
            '{"type": "step.started", "runId": "r", "occurredAt": 1, "source": "worker"}',
            "line 2: stepId: is required",
        ),
        (
            "reference",
            '{"type": "run.created", "runId": "r", "occurredAt": "soon", "source": "worker"}',
            "line 2: occurredAt: must be a finite number",
        ),
        (
            "reference",
            '{"type": "run.created", "runId": "r", "occurredAt": NaN, "source": "worker"}',
            "line 2: invalid JSON",
        ),
        (
            "reference",
            '{"type": "run.created", "runId": "r", "occurredAt": 1, "source": "worker", '
            '"status": "nope"}',
            "line 2: status: unknown run status 'nope'",
        ),
        ("reference", "[1, 2]", "line 2: must be a JSON object"),
        (
            "reference",
            '{"type": "log.appended", "runId": "r", "occurredAt": 1, "source": "worker", '
            '"lines": ["ok", "\\ud800x"]}',
            "line 2: lines[1]: is not valid Unicode (lone surrogate)",
        ),
        (
            "proto",
            '{"runId": "r", "eventTime": "2026-01-01T00:00:00Z"}',
            "line 2: payload: is required",
        ),
        (
            "proto",
            '{"runId": "r", "eventTime": "2026-01-01T00:00:00Z", "bogus": 1}',
            'line 2: Message type "ledgerflow.v1.LedgerEvent" has no field named "bogus"',
        ),
        (
            "proto",
            '{"runId": "", "eventTime": "2026-01-01T00:00:00Z", "runStarted": {}}',
            "line 2: run_id: must be a non-empty string",
        ),
    ],
)
def test_a_malformed_line_exits_2_with_one_line_naming_it(
    fmt: str, line: str, message: str
) -> None:
    good = (
        json.dumps(REFERENCE_LINES[0])
        if fmt == "reference"
        else json.dumps({"runId": "p", "eventTime": "2026-01-01T00:00:00Z", "runStarted": {}})
    )
    proc = cli("ledger", "reduce", "-", "--format", fmt, stdin=f"{good}\n{line}\n")
    assert proc.returncode == 2
    assert proc.stdout == ""  # nothing partial is printed
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"ledgerflow: {message}")


def test_unreadable_file_and_bad_flags_exit_2_with_one_line(tmp_path: Path) -> None:
    missing = cli("ledger", "reduce", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == f"ledgerflow: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory"
    )
    bad_flag = cli("ledger", "reduce", "--format", "yaml")
    assert bad_flag.returncode == 2
    assert bad_flag.stderr.count("\n") == 1
    assert "invalid choice: 'yaml'" in bad_flag.stderr
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\n")
    undecodable = cli("ledger", "reduce", str(binary))
    assert undecodable.returncode == 2
    assert undecodable.stderr.startswith("ledgerflow: line 1: not valid UTF-8")

"""The Python ledger core reproduces the committed reference vectors (tests/vectors/*.json).

The vectors were computed by the reference algorithms (tests/vectors/generate.py); these
tests need neither node nor the reference sources. Null and absent keys are equivalent
(documented deviation), so JSON shapes are compared after dropping null-valued keys.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.cli import main as cli_main
from ledgerflow.ledger import (
    DeterministicRandom,
    empty_snapshot,
    events_from_status_patch,
    fnv1a32,
    reduce_events,
    slice_positional_log_lines,
)
from ledgerflow.ledger.reference import (
    event_from_json,
    event_to_json,
    snapshot_to_json,
    status_patch_from_json,
)
from ledgerflow.v1 import ledger_pb2 as pb
from tests.reference_oracle import assert_same_json, comparable

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NANOS_PER_MILLI = 1_000_000
SOURCES: dict[str, pb.EventSource.ValueType] = {
    "worker": pb.EVENT_SOURCE_WORKER,
    "coordinator": pb.EVENT_SOURCE_COORDINATOR,
    "system": pb.EVENT_SOURCE_SYSTEM,
}

Case = dict[str, Any]


def load_cases(name: str) -> list[Case]:
    data = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert "generate.py" in data["about"]
    cases: list[Case] = data["cases"]
    assert cases, f"{name} has no cases"
    return cases


def case_id(case: Case) -> str:
    return str(case.get("name") or case.get("runId") or "?")[:80]


DETERMINISM = load_cases("determinism.json")
SLICING = load_cases("slicing.json")
LEDGERS = load_cases("ledgers.json")
STATUS_PATCHES = load_cases("status_patches.json")


def group_by_run(events: list[Case]) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = {}
    for event in events:
        groups.setdefault(event["runId"], []).append(event)
    return groups


def reduce_reference_events(run_id: str, events: list[Case]) -> pb.RunSnapshot:
    return reduce_events(empty_snapshot(run_id), [event_from_json(e) for e in events])


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", [c for c in DETERMINISM if "hash" in c], ids=lambda c: repr(c["runId"])[:40]
)
def test_determinism_vectors(case: Case) -> None:
    run_id: str = case["runId"]
    assert fnv1a32(run_id) == case["hash"]
    rng = DeterministicRandom(run_id)
    assert [rng.random() for _ in range(len(case["random"]))] == case["random"]
    fresh = DeterministicRandom(run_id)
    assert [fresh.uuid4() for _ in range(len(case["uuids"]))] == case["uuids"]


@pytest.mark.parametrize(
    "case", [c for c in DETERMINISM if "calls" in c], ids=lambda c: repr(c["runId"])
)
def test_determinism_interleaved_vectors(case: Case) -> None:
    rng = DeterministicRandom(case["runId"])
    values = [rng.random() if call == "random" else rng.uuid4() for call in case["calls"]]
    assert values == case["values"]


def test_determinism_vectors_cover_the_brief() -> None:
    run_ids = {c["runId"] for c in DETERMINISM}
    assert {"", "a", "run-1", "héllo wörld", "🚀run", "运行-42"} <= run_ids
    assert any(len(r) >= 300 for r in run_ids)
    assert any(any(ord(ch) > 0xFFFF for ch in r) for r in run_ids)


# --- slicing ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SLICING, ids=case_id)
def test_slicing_vectors(case: Case) -> None:
    got = slice_positional_log_lines(
        case["bufferLines"], case["bufferTotalCount"], case["sentCount"]
    )
    expected = case["expected"]
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert {"lines": got.lines, "channelOffset": got.channel_offset} == expected


# --- ledgers ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LEDGERS, ids=case_id)
def test_ledger_vectors(case: Case) -> None:
    if case["mode"] == "single":
        snapshots = [reduce_reference_events(case["runId"], case["events"])]
    else:
        snapshots = [
            reduce_reference_events(run_id, events)
            for run_id, events in group_by_run(case["events"]).items()
        ]
    assert_same_json([snapshot_to_json(s) for s in snapshots], case["snapshots"])


def test_ledger_vectors_cover_every_rule() -> None:
    rules = {c["rule"] for c in LEDGERS}
    assert rules >= {
        "status-normalisation",
        "terminal-precedence",
        "terminal-conflict-anomaly",
        "failed-demotes-completed",
        "cancelled-stays-cancelled",
        "failed-never-completed",
        "duplicate-terminal-benign",
        "steps-ordered-first-seen",
        "step-failed-sticky",
        "step-started-keeps-finished",
        "progress-merge",
        "progress-infers-completion",
        "progress-no-totals",
        "progress-completedAt",
        "progress-on-finished-step",
        "active-step",
        "active-artifact-namespace",
        "result-table-namespace",
        "sheet-summary",
        "log-tail-bound",
        "log-total-count",
        "log-first-seq",
        "logs-truncated",
        "log-blank-lines",
        "log-repeated-lines",
        "timing",
        "other-run-ignored",
        "run-created-started",
        "result-handling",
    }


def test_cli_reduces_every_grouped_ledger_vector(tmp_path: Path) -> None:
    """`ledgerflow ledger reduce --format reference` prints the vectors' snapshots."""
    failures: list[str] = []
    for index, case in enumerate(c for c in LEDGERS if c["mode"] == "grouped"):
        source = tmp_path / f"case-{index}.jsonl"
        source.write_text(
            "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in case["events"]),
            encoding="utf-8",
        )
        got = run_cli_reduce(source, tmp_path / f"case-{index}.out")
        if canonical(got) != canonical(case["snapshots"]):
            failures.append(case["name"])
    assert failures == []


def run_cli_reduce(source: Path, out: Path) -> list[Any]:
    """Run the CLI in-process on ``source``; return the snapshots it printed."""
    with out.open("w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        code = cli_main(["ledger", "reduce", str(source), "--format", "reference"])
    assert code == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()]


def canonical(value: Any) -> str:
    return json.dumps(comparable(value), sort_keys=True)


# --- status patches -----------------------------------------------------------------------


def ledgerflow_expected_events(case: Case) -> list[Case]:
    """The case's expected events, with ledgerflow's documented deviation applied."""
    expected: list[Case] = [dict(e) for e in case["events"]]
    deviation = case.get("ledgerflow_deviation")
    if deviation is not None:
        replace = deviation["replaceType"]
        matching = [e for e in expected if e["type"] == replace["from"]]
        assert len(matching) == 1, "a deviation case has exactly one terminal event"
        matching[0]["type"] = replace["to"]
    return expected


@pytest.mark.parametrize("case", STATUS_PATCHES, ids=case_id)
def test_status_patch_vectors(case: Case) -> None:
    patch = status_patch_from_json(case["patch"])
    previous = reduce_reference_events(case["patch"]["runId"], case["previousEvents"])
    events = events_from_status_patch(
        patch,
        previous,
        now_nanos=case["now"] * NANOS_PER_MILLI,
        source=SOURCES[case.get("source", "worker")],
    )
    assert_same_json([event_to_json(e) for e in events], ledgerflow_expected_events(case))


@pytest.mark.parametrize(
    "case", [c for c in STATUS_PATCHES if "ledgerflow_deviation" not in c], ids=case_id
)
def test_status_patch_events_reduce_like_the_reference_events(case: Case) -> None:
    """Appending the derived events moves the snapshot as the reference's events would.

    Only for cases without a deviation: there the reference's events are ledgerflow's too.
    """
    run_id = case["patch"]["runId"]
    previous = reduce_reference_events(run_id, case["previousEvents"])
    derived = events_from_status_patch(
        status_patch_from_json(case["patch"]),
        previous,
        now_nanos=case["now"] * NANOS_PER_MILLI,
        source=SOURCES[case.get("source", "worker")],
    )
    expected = reduce_reference_events(run_id, case["previousEvents"] + case["events"])
    assert_same_json(snapshot_to_json(reduce_events(previous, derived)), snapshot_to_json(expected))

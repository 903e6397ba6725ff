"""Positional log cursors: slicing on the producer side, ingestion on the coordinator side."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflow.errors import InvalidEventError
from ledgerflow.ledger import (
    BLANK_LINE_PLACEHOLDER,
    LogRetention,
    RunLogState,
    build_log_events,
    empty_snapshot,
    ingest_log_batch,
    reduce_events,
    slice_positional_log_lines,
    validate_event,
)
from ledgerflow.ledger._logs import without_nul
from ledgerflow.v1 import ledger_pb2 as pb
from tests.ledger.builders import ev


def batch(lines: list[str], offset: int | None, channel: str = "out") -> pb.LedgerEvent:
    fields: dict[str, Any] = {"lines": lines, "channel": channel}
    if offset is not None:
        fields["channel_offset"] = offset
    return ev("log_appended", 1, **fields)


def test_overlapping_resend_skips_the_ingested_prefix_by_position() -> None:
    state = RunLogState()
    first = ingest_log_batch(batch(["a", "a", "b"], 0), state, LogRetention())
    assert [line.text for line in first.stored] == ["a", "a", "b"]
    again = ingest_log_batch(batch(["a", "b", "a", "a"], 1), state, LogRetention())
    # Offsets 1 and 2 were ingested; offsets 3 and 4 are new, identical lines included.
    assert [(line.seq, line.text) for line in again.stored] == [(4, "a"), (5, "a")]
    assert again.event is not None
    assert again.event.log_appended.first_seq == 4
    assert state.cursors["out"] == 5


def test_a_full_duplicate_yields_no_event() -> None:
    state = RunLogState()
    ingest_log_batch(batch(["a", "b"], 0), state, LogRetention())
    result = ingest_log_batch(batch(["a", "b"], 0), state, LogRetention())
    assert result.event is None
    assert result.stored == []
    assert state.last_seq == 2


def test_a_jump_records_one_gap_marker_and_continues() -> None:
    state = RunLogState()
    ingest_log_batch(batch(["a"], 0), state, LogRetention())
    result = ingest_log_batch(batch(["x", "y"], 5), state, LogRetention())
    assert [(line.text, line.marker) for line in result.stored] == [
        ("[ledger] log gap on channel out: 4 line(s) never arrived (offsets 1..4)", True),
        ("x", False),
        ("y", False),
    ]
    assert state.cursors["out"] == 7


def test_channels_have_independent_cursors_and_share_run_seqs() -> None:
    state = RunLogState()
    ingest_log_batch(batch(["o1"], 0, "stdout"), state, LogRetention())
    result = ingest_log_batch(batch(["e1"], 0, "stderr"), state, LogRetention())
    assert [(line.seq, line.channel) for line in result.stored] == [(2, "stderr")]


def test_blank_positional_lines_keep_their_place() -> None:
    state = RunLogState()
    result = ingest_log_batch(batch(["a", "   ", "b"], 0), state, LogRetention())
    assert [line.text for line in result.stored] == ["a", BLANK_LINE_PLACEHOLDER, "b"]
    unpositioned = ingest_log_batch(batch(["c", " ", "d"], None), state, LogRetention())
    assert [line.text for line in unpositioned.stored] == ["c", "d"]


def test_retention_cap_stores_a_marker_last_and_keeps_counting() -> None:
    state = RunLogState()
    cap = LogRetention(max_lines=4, max_bytes=1_000)
    result = ingest_log_batch(batch([f"l{i}" for i in range(6)], 0), state, cap)
    texts = [line.text for line in result.stored]
    assert texts[:3] == ["l0", "l1", "l2"]
    assert texts[3].startswith("[ledger] log retention cap reached")
    assert len(result.stored) == 4
    assert state.truncated
    assert state.last_seq == 7  # 3 lines + marker + 3 dropped bodies
    later = ingest_log_batch(batch(["l6", "l7"], 6), state, cap)
    assert later.stored == []
    assert later.event is not None
    assert later.event.log_appended.first_seq == 8
    assert later.event.log_appended.dropped_line_count == 2
    assert state.last_seq == 9
    assert result.event is not None
    snap = reduce_events(empty_snapshot("r"), [result.event, later.event])
    assert snap.total_log_count == 9
    assert snap.logs_truncated
    assert snap.log_tail[-1].startswith("[ledger] log retention cap reached")


def test_byte_cap_applies_too() -> None:
    state = RunLogState()
    result = ingest_log_batch(batch(["x" * 60, "y" * 60], 0), state, LogRetention(max_bytes=100))
    assert [line.text[:1] for line in result.stored] == ["x", "["]
    assert state.truncated


def test_build_log_events_positional_and_not() -> None:
    (positional,) = build_log_events("r", [" a ", ""], event_time_nanos=5, channel_offset=3)
    assert list(positional.log_appended.lines) == ["a", BLANK_LINE_PLACEHOLDER]
    assert positional.log_appended.channel_offset == 3
    (plain,) = build_log_events("r", [" a ", ""], event_time_nanos=5)
    assert list(plain.log_appended.lines) == ["a"]
    assert not plain.log_appended.HasField("channel_offset")
    assert build_log_events("r", ["", "  "], event_time_nanos=5) == []


# -- properties ------------------------------------------------------------

lines_strategy = st.lists(st.sampled_from(["a", "b", "same", "same", "x y"]), max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    lines=lines_strategy,
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
    redeliver=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
)
def test_redelivery_is_idempotent_and_batching_does_not_matter(
    lines: list[str], cuts: list[int], redeliver: list[int]
) -> None:
    """Any batching plus any overlapping resends store each emitted line exactly once, in order."""
    bounds = sorted({0, len(lines), *(min(c, len(lines)) for c in cuts)})
    batches = [(lines[a:b], a) for a, b in pairwise(bounds)]
    # Resends: from any earlier offset up to the current end, interleaved.
    state = RunLogState()
    stored: list[str] = []
    end = 0
    for i, (chunk, offset) in enumerate(batches):
        for result in (
            ingest_log_batch(batch(chunk, offset), state, LogRetention()),
            *(
                ingest_log_batch(batch(lines[r : offset + len(chunk)], r), state, LogRetention())
                for r in redeliver[i : i + 1]
                if r <= offset + len(chunk)
            ),
        ):
            stored.extend(line.text for line in result.stored)
        end = offset + len(chunk)
    assert stored == lines[:end]
    assert state.last_seq == len(lines)


@settings(max_examples=150, deadline=None)
@given(
    emitted=st.integers(min_value=0, max_value=60),
    capacity=st.integers(min_value=0, max_value=20),
    sends=st.lists(st.integers(min_value=0, max_value=60), max_size=10),
)
def test_slicing_never_returns_a_line_twice(emitted: int, capacity: int, sends: list[int]) -> None:
    """A producer with a rotating buffer sends each line at most once, never out of order."""
    sent = 0
    seen: list[int] = []
    produced = 0
    for target in [*sorted(sends), emitted]:
        produced = max(produced, min(target, emitted))
        buffer = [str(i) for i in range(max(0, produced - capacity), produced)]
        piece = slice_positional_log_lines(buffer, produced, sent)
        if piece is None:
            continue
        numbers = [int(x) for x in piece.lines]
        assert numbers == list(range(piece.channel_offset, piece.channel_offset + len(numbers)))
        assert piece.channel_offset >= sent
        seen.extend(numbers)
        sent = piece.channel_offset + len(piece.lines)
    assert seen == sorted(set(seen))


def test_a_producer_replaces_nul_in_place_so_the_coordinator_takes_the_line() -> None:
    lines = without_nul(["a\x00b", "c"])
    assert lines == ["a\ufffdb", "c"]
    (event,) = build_log_events("r", lines, event_time_nanos=5, channel_offset=0)
    validate_event(event)
    (raw,) = build_log_events("r", ["a\x00b"], event_time_nanos=5, channel_offset=0)
    with pytest.raises(InvalidEventError, match=r"lines\[0\]"):
        validate_event(raw)

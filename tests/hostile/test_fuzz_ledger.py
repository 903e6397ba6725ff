"""Hypothesis fuzzing of the pure ledger: the reducer over hostile field values, log ingestion
under arbitrary (out-of-order, overlapping) resends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflow.errors import InvalidArgumentError
from ledgerflow.ledger import (
    LogRetention,
    RunLogState,
    empty_snapshot,
    ingest_log_batch,
    reduce_events,
    validate_event,
)
from ledgerflow.v1 import ledger_pb2 as pb
from tests.ledger.test_properties import LEDGERS

HOSTILE_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12
) | st.sampled_from(["", " ", "\x00", "a" * 300, "é\u202e"])
HOSTILE_INT = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 1, 2**31, -(2**31)])
TIMES = st.integers(-62_135_596_800, 253_402_300_799)


@st.composite
def hostile_ledgers(draw: st.DrawFn) -> list[pb.LedgerEvent]:
    """Well-typed ledgers whose ids, counts and times are pushed to their extremes."""
    out = []
    for event in draw(LEDGERS):
        e = pb.LedgerEvent()
        e.CopyFrom(event)
        e.run_id = "r"
        if draw(st.booleans()):
            e.event_time.seconds = draw(TIMES)
        case = e.WhichOneof("payload")
        assert case is not None
        payload = getattr(e, case)
        for name in ("step_id", "waitpoint_id", "name"):
            if name in payload.DESCRIPTOR.fields_by_name and draw(st.booleans()):
                setattr(payload, name, draw(HOSTILE_TEXT))
        if case == "step_progress" and draw(st.booleans()):
            payload.progress.completed = draw(HOSTILE_INT)
            payload.progress.total = draw(HOSTILE_INT)
        if case == "log_appended" and draw(st.booleans()):
            payload.lines.extend(draw(st.lists(HOSTILE_TEXT, max_size=3)))
        if "attempt" in payload.DESCRIPTOR.fields_by_name and draw(st.booleans()):
            payload.attempt = draw(st.integers(-(2**31), 2**31 - 1))
        try:
            validate_event(e)
        except InvalidArgumentError:
            continue  # refused at the edge: never reaches the reducer
        out.append(e)
    return out


@settings(max_examples=150, deadline=None)
@given(ledger=hostile_ledgers(), cut=st.integers(0, 40))
def test_the_reducer_never_raises_and_folds_associatively(
    ledger: list[pb.LedgerEvent], cut: int
) -> None:
    whole = reduce_events(empty_snapshot("r"), ledger)
    head = reduce_events(empty_snapshot("r"), ledger[:cut])
    assert reduce_events(head, ledger[cut:]) == whole


def _send(state: RunLogState, start: int, end: int) -> list[tuple[int, str, bool]]:
    event = pb.LedgerEvent(run_id="r")
    event.event_time.seconds = 1
    event.log_appended.lines.extend(f"L{i}" for i in range(start, end))
    event.log_appended.channel_offset = start
    result = ingest_log_batch(event, state, LogRetention())
    return [(line.seq, line.text, line.marker) for line in result.stored]


@settings(max_examples=200, deadline=None)
@given(sends=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 12)), max_size=12))
def test_positional_ingestion_stores_each_offset_at_most_once_in_order(
    sends: list[tuple[int, int]],
) -> None:
    """Arbitrary windows, resent in any order: no line twice, offsets rising, seqs gapless."""
    state = RunLogState()
    stored: list[tuple[int, str, bool]] = []
    for start, length in sends:
        stored.extend(_send(state, start, start + length))
    offsets = [int(text[1:]) for _, text, marker in stored if not marker]
    assert offsets == sorted(set(offsets))
    assert [seq for seq, _, _ in stored] == list(range(1, len(stored) + 1))
    assert state.last_seq == len(stored)
    # Every offset below the cursor is either stored or announced by a gap marker.
    cursor = state.cursors.get("", 0)
    gaps = sum(1 for _, _, marker in stored if marker)
    assert len(offsets) + gaps >= (1 if cursor else 0)
    assert set(offsets) <= set(range(cursor))


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(0, 40),
    resends=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=10),
)
def test_overlapping_resends_that_never_skip_ahead_deliver_exactly_once(
    total: int, resends: list[tuple[int, int]]
) -> None:
    """A producer that resends any window starting at or before the cursor: exactly once."""
    state = RunLogState()
    stored: list[tuple[int, str, bool]] = []
    for a, b in resends:
        cursor = state.cursors.get("", 0)
        start = min(a, cursor)
        stored.extend(_send(state, start, min(total, max(start, b))))
    stored.extend(_send(state, state.cursors.get("", 0), total))
    assert [text for _, text, _ in stored] == [f"L{i}" for i in range(total)]

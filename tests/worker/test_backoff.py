"""Reconnect delays: exponential ceilings, full jitter, a cap, a reset."""

from __future__ import annotations

import pytest

from ledgerflow.worker._backoff import Backoff


def test_ceilings_double_up_to_the_cap_and_the_draw_spans_zero_to_the_ceiling() -> None:
    top = Backoff(0.1, 5.0, rng=lambda: 1.0)
    assert [round(top.next_delay(), 6) for _ in range(9)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
        5.0,
        5.0,
    ]
    bottom = Backoff(0.1, 5.0, rng=lambda: 0.0)
    assert {bottom.next_delay() for _ in range(5)} == {0.0}
    half = Backoff(0.1, 5.0, rng=lambda: 0.5)
    assert half.next_delay() == pytest.approx(0.05)


def test_reset_starts_again_and_many_failures_do_not_overflow() -> None:
    backoff = Backoff(0.1, 5.0, rng=lambda: 1.0)
    for _ in range(5000):
        backoff.next_delay()
    assert backoff.next_delay() == 5.0
    assert backoff.failures == 5001
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


def test_the_default_draw_stays_within_the_ceiling() -> None:
    backoff = Backoff(0.1, 5.0)
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) > 1

"""Reconnect delays: exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the exponential ceiling) rather than
"ceiling ± some %" spreads the reconnects of many workers that lost the same
coordinator at the same instant, so a restarted coordinator is not hit by all of
them in the same millisecond (AWS Architecture Blog, "Exponential Backoff and
Jitter").
"""

from __future__ import annotations

import random
from collections.abc import Callable

# 2**30 times any sane initial delay is past any cap; stops the float from overflowing.
_MAX_EXPONENT = 30


class Backoff:
    """Delays for consecutive failed attempts: uniform in [0, min(maximum, initial * 2**n)]."""

    def __init__(
        self, initial: float, maximum: float, rng: Callable[[], float] = random.random
    ) -> None:
        """Create the schedule.

        Args:
            initial: The ceiling of the first delay, in seconds.
            maximum: The largest ceiling, in seconds.
            rng: A uniform draw in [0, 1); tests inject a fixed one.
        """
        self._initial = initial
        self._maximum = maximum
        self._rng = rng
        self._failures = 0

    @property
    def failures(self) -> int:
        """How many delays were drawn since the last :meth:`reset`."""
        return self._failures

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count one more failure."""
        exponent = min(self._failures, _MAX_EXPONENT)
        ceiling = min(self._maximum, self._initial * 2.0**exponent)
        self._failures += 1
        return self._rng() * ceiling

    def reset(self) -> None:
        """Start again from the first delay (after a successful connection)."""
        self._failures = 0

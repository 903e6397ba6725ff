"""Per-step retry policies.

The shape is Temporal's ``RetryPolicy`` (attempts, initial interval, backoff
coefficient, maximum interval, non-retryable error types). The default for a
step without ``retry=`` is a single attempt, as in DBOS and Hatchet: retrying
code with side effects must be asked for. ``max_attempts=0`` means unlimited, as
in Temporal.

Error types are matched by class name against the failed exception's class and
its bases, so ``"LookupError"`` also stops a ``KeyError``. An exception with a
truthy ``non_retryable`` attribute is never retried whatever the policy says (it
is recorded as ``ErrorInfo.non_retryable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

_DEFAULT_MAX_INTERVAL_FACTOR = 100  # Temporal's default: 100 x the initial interval.


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast a failed step is tried again.

    Attributes:
        max_attempts: Attempts in all, the first included; 0 means unlimited.
        initial_interval: The wait after the first failed attempt.
        backoff_coefficient: Each further wait is the previous one times this (at least 1).
        max_interval: The longest wait; None means 100 x ``initial_interval``.
        non_retryable_error_types: Exception class names that end the step at once.
    """

    max_attempts: int = 3
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    max_interval: timedelta | None = None
    non_retryable_error_types: Sequence[str] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ValueError("max_attempts must be 0 (unlimited) or more")
        if self.initial_interval < timedelta(0):
            raise ValueError("initial_interval must not be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")
        if self.max_interval is not None and self.max_interval < self.initial_interval:
            raise ValueError("max_interval must not be shorter than initial_interval")
        # Frozen and hashable: a list given by the caller becomes a tuple.
        object.__setattr__(self, "non_retryable_error_types", tuple(self.non_retryable_error_types))

    def allows_attempt(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (from 1) may run.

        Args:
            attempt: The attempt number.

        Returns:
            True when the policy has attempts left for it.
        """
        return self.max_attempts == 0 or attempt <= self.max_attempts

    def backoff(self, failed_attempt: int) -> timedelta:
        """The wait after attempt ``failed_attempt`` (from 1) failed.

        Args:
            failed_attempt: The attempt that failed.

        Returns:
            ``initial_interval x backoff_coefficient^(failed_attempt - 1)``, capped.
        """
        cap = self.max_interval or self.initial_interval * _DEFAULT_MAX_INTERVAL_FACTOR
        seconds = self.initial_interval.total_seconds()
        try:
            seconds *= self.backoff_coefficient ** max(0, failed_attempt - 1)
        except OverflowError:
            return cap
        return min(timedelta(seconds=min(seconds, cap.total_seconds())), cap)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried under this policy.

        Args:
            exc: The exception a step attempt raised.

        Returns:
            False when the exception says it is non-retryable or its class (or a
            base class) is named in ``non_retryable_error_types``.
        """
        if getattr(exc, "non_retryable", False):
            return False
        names = {cls.__name__ for cls in type(exc).__mro__}
        return names.isdisjoint(self.non_retryable_error_types)


NO_RETRY = RetryPolicy(max_attempts=1)
"""The policy of a step given no ``retry=``: one attempt."""

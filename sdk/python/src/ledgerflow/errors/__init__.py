"""The one error hierarchy ledgerflow raises to user code.

Every error ledgerflow raises derives from :class:`LedgerflowError`, so callers
can catch ledgerflow's failures without catching their own. Control flow inside
workflow bodies (waitpoints, cancellation) is not an error and does not live here.
"""

from __future__ import annotations


class LedgerflowError(Exception):
    """Base for every error ledgerflow raises to user code."""


class InvalidEventError(LedgerflowError, ValueError):
    """A ledger event is malformed; the message names the offending field.

    Attributes:
        field: Dotted path of the offending field, e.g. ``step_started.step_id``.
    """

    def __init__(self, field: str, problem: str) -> None:
        """Create the error.

        Args:
            field: Dotted path of the offending field.
            problem: What is wrong with it.
        """
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


__all__ = ["InvalidEventError", "LedgerflowError"]

"""Control-flow signals: how the engine unwinds a workflow body.

They derive from ``BaseException`` (as ``asyncio.CancelledError`` does), so a
body's ``except Exception`` cannot swallow them by accident. A body that catches
``BaseException`` and swallows one anyway is detected: the engine remembers every
signal it delivered and honours it whatever the body does next (the reference
executor does the same for a swallowed waitpoint signal), and every later
``ctx.step`` raises the same signal again.
"""

from __future__ import annotations


class ControlFlowSignal(BaseException):
    """Base of the signals the engine raises to unwind a workflow body; never an error.

    Code that must catch ``BaseException`` should re-raise these::

        except BaseException as exc:
            if isinstance(exc, workflow.ControlFlowSignal):
                raise
    """


class CancelledSignal(ControlFlowSignal):
    """The run was cancelled: raised at the body's next live ``ctx.step``.

    Attributes:
        reason: The cancellation's reason, empty when none was given.
    """

    def __init__(self, reason: str = "") -> None:
        """Create the signal.

        Args:
            reason: The cancellation's reason.
        """
        super().__init__(reason or "run cancelled")
        self.reason = reason


class CompensateRequestedSignal(ControlFlowSignal):
    """The body called ``ctx.compensate()``: unwind and run the compensations."""

    def __init__(self) -> None:
        super().__init__("compensate requested")


class WaitpointPendingSignal(ControlFlowSignal):
    """The body waits on a waitpoint; the invocation ends ``waiting``.

    Raised by ``ctx.sleep`` and ``ctx.wait_for_signal`` when the ledger has not
    resolved the waitpoint yet; let it propagate.

    Attributes:
        waitpoint_id: The waitpoint waited on.
    """

    def __init__(self, waitpoint_id: str) -> None:
        """Create the signal.

        Args:
            waitpoint_id: The waitpoint waited on.
        """
        super().__init__(f"waitpoint pending: {waitpoint_id}")
        self.waitpoint_id = waitpoint_id


class ExecutionAbortedSignal(ControlFlowSignal):
    """The workflow task cannot go on: the sink refused an append (e.g. a stale lease).

    The engine raises it into the body to unwind it, then re-raises the sink's
    own exception from ``WorkflowExecution.run``; nothing more is appended.
    """

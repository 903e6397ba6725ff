"""Run workflow tasks from a ledgerflow coordinator: :class:`Worker`.

A worker holds one stream to a coordinator (``WorkerService.Connect``), runs the
workflow tasks it is given through :mod:`ledgerflow.workflow` (and the step tasks of
the kinds it serves, ``Worker(steps=...)``), reconnects when the
stream breaks without failing the tasks it runs, and drains on request. The
``ledgerflow worker MODULE[:ATTR]`` command runs one; see ``docs/workers.md``.
"""

from ledgerflow.worker._step import NeedsHuman, StepCancelledError, StepContext, StepHandler
from ledgerflow.worker._worker import DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_CONCURRENT_TASKS, Worker

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_MAX_CONCURRENT_TASKS",
    "NeedsHuman",
    "StepCancelledError",
    "StepContext",
    "StepHandler",
    "Worker",
]

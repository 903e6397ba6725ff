"""Write durable workflows: bodies, steps, the deterministic ``ctx``, and the engine.

Authors use :func:`defn`, :class:`Context` (``ctx``), :class:`RetryPolicy`,
:class:`CommandResult` (``ctx.run_command``) and the errors and signals below.
Workers use :class:`Registry`, :class:`WorkflowExecution` (or :func:`execute`) and
provide an :class:`EventSink`. The engine performs no I/O of its own (command
steps run their subprocess as a step function does); see ``docs/workflows.md``
for the replay and compensation semantics.
"""

from ledgerflow.errors import (
    ChildRunFailedError,
    NonDeterminismError,
    StepFailedError,
    WaitTimeoutError,
)
from ledgerflow.workflow._command import (
    RESULT_FILE_ENV,
    CommandArtifact,
    CommandFailedError,
    CommandMetrics,
    CommandResult,
)
from ledgerflow.workflow._context import ChildHandle, Context, WorkflowContext
from ledgerflow.workflow._definition import Registry, WorkflowDefinition, defn
from ledgerflow.workflow._execution import WORKFLOW_LOG_CHANNEL, WorkflowExecution, execute
from ledgerflow.workflow._retry import RetryPolicy
from ledgerflow.workflow._signals import (
    CancelledSignal,
    CompensateRequestedSignal,
    ControlFlowSignal,
    WaitpointPendingSignal,
)
from ledgerflow.workflow._sink import BatchingSink, EventSink

__all__ = [
    "RESULT_FILE_ENV",
    "WORKFLOW_LOG_CHANNEL",
    "BatchingSink",
    "CancelledSignal",
    "ChildHandle",
    "ChildRunFailedError",
    "CommandArtifact",
    "CommandFailedError",
    "CommandMetrics",
    "CommandResult",
    "CompensateRequestedSignal",
    "Context",
    "ControlFlowSignal",
    "EventSink",
    "NonDeterminismError",
    "Registry",
    "RetryPolicy",
    "StepFailedError",
    "WaitTimeoutError",
    "WaitpointPendingSignal",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowExecution",
    "defn",
    "execute",
]

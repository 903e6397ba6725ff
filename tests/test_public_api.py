"""The public surface is a decision: changing it must change this test too."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "ledgerflow.errors": [
        "STATUS_CODE_NAMES",
        "ChildRunFailedError",
        "CoordinatorUnavailableError",
        "FailedPreconditionError",
        "InvalidArgumentError",
        "InvalidEventError",
        "LedgerflowError",
        "NonDeterminismError",
        "PayloadTooLargeError",
        "PermissionDeniedError",
        "ResultTimeoutError",
        "RunAlreadyExistsError",
        "RunCancelledError",
        "RunEndedError",
        "RunFailedError",
        "RunNotFoundError",
        "RunTerminatedError",
        "RunTimedOutError",
        "StepFailedError",
        "WaitTimeoutError",
        "WorkerRefusedError",
        "WorkflowNotFoundError",
        "WorkflowUsageError",
    ],
    "ledgerflow.cli": ["main"],
    "ledgerflow.ledger": [
        "BLANK_LINE_PLACEHOLDER",
        "JSON_ENCODING",
        "LOG_TAIL_LIMIT",
        "MAX_ID_LENGTH",
        "TERMINAL_STATUSES",
        "DeterministicRandom",
        "IngestResult",
        "LogRetention",
        "Mulberry32",
        "PositionalSlice",
        "RunLogState",
        "StoredLine",
        "apply_event",
        "apply_journal_event",
        "apply_metadata_mutations",
        "build_log_events",
        "check_id",
        "empty_journal",
        "empty_snapshot",
        "events_from_status_patch",
        "fnv1a32",
        "ingest_log_batch",
        "is_terminal",
        "json_payload",
        "normalize_status",
        "payload_value",
        "project_journal",
        "project_journal_events",
        "reduce",
        "reduce_events",
        "slice_positional_log_lines",
        "validate_event",
    ],
    "ledgerflow.worker": [
        "DEFAULT_DRAIN_TIMEOUT",
        "DEFAULT_MAX_CONCURRENT_TASKS",
        "NeedsHuman",
        "StepCancelledError",
        "StepContext",
        "StepHandler",
        "Worker",
    ],
    "ledgerflow.workflow": [
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
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_exactly_these(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None


def test_ledgerflow_is_a_namespace_package() -> None:
    ledgerflow = importlib.import_module("ledgerflow")
    assert getattr(ledgerflow, "__file__", None) is None
    assert len(list(ledgerflow.__path__)) >= 2


def test_ledger_core_imports_no_io_library() -> None:
    """The pure core must stay free of I/O so both sides can call it anywhere."""
    import ast
    from pathlib import Path

    root = Path(importlib.import_module("ledgerflow.ledger").__file__ or "").parent
    forbidden = {"asyncio", "grpc", "sqlalchemy", "socket", "subprocess", "os", "io", "pathlib"}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_workflow_engine_imports_no_io_library() -> None:
    """The engine talks to the outside only through the sink the worker provides."""
    import ast
    from pathlib import Path

    root = Path(importlib.import_module("ledgerflow.workflow").__file__ or "").parent
    forbidden = {"grpc", "sqlalchemy", "socket", "subprocess", "os", "io", "pathlib"}
    # _command.py runs ctx.run_command's subprocess: a step function ledgerflow
    # ships, which like any step function runs only live, never on replay. It may
    # reach the operating system (os, asyncio's subprocesses) and nothing else here may.
    command_may = {"os"}
    for path in root.glob("*.py"):
        allowed = command_may if path.name == "_command.py" else set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in forbidden - allowed, f"{path.name} imports {name}"
                assert not name.startswith("ledgerflow.coordinator"), path.name
                assert not name.startswith("ledgerflow.client"), path.name

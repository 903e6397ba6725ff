"""The pure ledger core shared by the coordinator and every SDK.

Reducer (ledger → snapshot), journal projection (ledger → what replay needs),
positional log slicing and ingestion, status-patch derivation, deterministic
random and uuid, and event validation. Nothing here performs I/O: the
coordinator and the workers call these functions inside their own transactions
and event loops. The reference-format codec lives in
:mod:`ledgerflow.ledger.reference`.
"""

from ledgerflow.ledger._determinism import DeterministicRandom, Mulberry32, fnv1a32
from ledgerflow.ledger._journal import (
    apply_journal_event,
    empty_journal,
    project_journal,
    project_journal_events,
)
from ledgerflow.ledger._logs import (
    BLANK_LINE_PLACEHOLDER,
    IngestResult,
    LogRetention,
    PositionalSlice,
    RunLogState,
    StoredLine,
    build_log_events,
    ingest_log_batch,
    slice_positional_log_lines,
)
from ledgerflow.ledger._metadata import apply_metadata_mutations
from ledgerflow.ledger._payload import JSON_ENCODING, json_payload, payload_value
from ledgerflow.ledger._reducer import (
    LOG_TAIL_LIMIT,
    apply_event,
    empty_snapshot,
    reduce,
    reduce_events,
)
from ledgerflow.ledger._status import TERMINAL_STATUSES, is_terminal, normalize_status
from ledgerflow.ledger._status_patch import events_from_status_patch
from ledgerflow.ledger._validate import MAX_ID_LENGTH, check_id, validate_event

__all__ = [
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
]

"""The coordinator's SQL store: engines, migrations, the append path and the reads."""

from ledgerflow.coordinator.store._append import (
    REFUSED_AFTER_TERMINAL,
    Outcome,
    StartRunSpec,
)
from ledgerflow.coordinator.store._engine import (
    DEFAULT_SQLITE_URL,
    READ_ONLY,
    create_engine,
    current_revision,
    dialect_name,
    upgrade,
)
from ledgerflow.coordinator.store._sql_runs import (
    DEFAULT_NAMESPACE,
    PagePosition,
    RunFilter,
    namespace_of,
)
from ledgerflow.coordinator.store._store import NOTIFY_CHANNEL, Store, Touched
from ledgerflow.coordinator.store._verify import Mismatch, verify

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_SQLITE_URL",
    "NOTIFY_CHANNEL",
    "READ_ONLY",
    "REFUSED_AFTER_TERMINAL",
    "Mismatch",
    "Outcome",
    "PagePosition",
    "RunFilter",
    "StartRunSpec",
    "Store",
    "Touched",
    "create_engine",
    "current_revision",
    "dialect_name",
    "namespace_of",
    "upgrade",
    "verify",
]

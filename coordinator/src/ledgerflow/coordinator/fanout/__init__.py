"""Fan-out of committed changes: in-process (the hub) and across processes (Postgres LISTEN)."""

from ledgerflow.coordinator.fanout._hub import Hub, ListSubscription, RunSubscription
from ledgerflow.coordinator.fanout._listener import PostgresListener, asyncpg_dsn

__all__ = ["Hub", "ListSubscription", "PostgresListener", "RunSubscription", "asyncpg_dsn"]

"""Alembic environment for the coordinator's schema.

Migrations run on a connection that :func:`ledgerflow.coordinator.store.upgrade` hands in
through ``config.attributes["connection"]``, inside the transaction (and, on Postgres, under
the advisory lock) it opened; this file never creates an engine of its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ledgerflow.coordinator.store._schema import metadata


def _run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: autogenerate writes batch operations
        # (copy-and-move) for it.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    # The caller's transaction is already open, so this only marks the boundary.
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        raise RuntimeError(
            "ledgerflow migrations run online on a connection handed in by "
            "ledgerflow.coordinator.store.upgrade (or `ledgerflow db upgrade`)"
        )
    _run_migrations(connection)


_main()

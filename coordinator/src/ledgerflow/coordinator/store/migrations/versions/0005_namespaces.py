"""Namespaces: every run lives in one; idempotency keys are unique per namespace.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HAS_KEY = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    """Add ``runs.namespace`` (existing runs are in "default"), key idempotency by namespace."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("namespace", sa.Text(), nullable=False, server_default=sa.text("'default'"))
        )
    op.drop_index("ix_runs_idempotency_key", table_name="runs")
    op.create_index(
        "ix_runs_namespace_idempotency_key",
        "runs",
        ["namespace", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text(_HAS_KEY),
        sqlite_where=sa.text(_HAS_KEY),
    )
    op.create_index(
        "ix_runs_namespace_create_time_run_id", "runs", ["namespace", "create_time", "run_id"]
    )


def downgrade() -> None:
    """Drop namespaces (fails if two namespaces share an idempotency key)."""
    op.drop_index("ix_runs_namespace_create_time_run_id", table_name="runs")
    op.drop_index("ix_runs_namespace_idempotency_key", table_name="runs")
    op.create_index(
        "ix_runs_idempotency_key",
        "runs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text(_HAS_KEY),
        sqlite_where=sa.text(_HAS_KEY),
    )
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("namespace")

"""Tasks: the dispatch queue with leases (workflow tasks and step tasks).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``tasks`` (older runs get none: they were never started to run on workers)."""
    op.create_table(
        "tasks",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False),
        sa.Column("available_time", sa.BigInteger(), nullable=False),
        sa.Column("lease_expire_time", sa.BigInteger(), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("session_id", sa.Text(), nullable=True),
        sa.Column("invocation", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "task_id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_task_id", "tasks", ["task_id"], unique=True)
    op.create_index(
        "ix_tasks_status_queue_available_time", "tasks", ["status", "queue", "available_time"]
    )
    op.create_index("ix_tasks_status_lease_expire_time", "tasks", ["status", "lease_expire_time"])
    op.create_index(
        "ix_tasks_open_workflow_task",
        "tasks",
        ["run_id"],
        unique=True,
        postgresql_where=sa.text("kind = 1 AND status != 3"),
        sqlite_where=sa.text("kind = 1 AND status != 3"),
    )


def downgrade() -> None:
    """Drop ``tasks``."""
    op.drop_table("tasks")

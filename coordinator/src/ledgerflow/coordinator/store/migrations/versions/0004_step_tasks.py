"""Step tasks (the step a task runs, the request a worker gets) and an index of children.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``tasks.step_id``, ``tasks.step_request`` (null for workflow tasks); index children."""
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("step_id", sa.Text(), nullable=True))
        batch.add_column(sa.Column("step_request", sa.LargeBinary(), nullable=True))
    op.create_index(
        "ix_runs_parent_run_id",
        "runs",
        ["parent_run_id"],
        postgresql_where=sa.text("parent_run_id IS NOT NULL"),
        sqlite_where=sa.text("parent_run_id IS NOT NULL"),
    )


def downgrade() -> None:
    """Drop the step columns (step tasks lose what they would run) and the index."""
    op.drop_index("ix_runs_parent_run_id", table_name="runs")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("step_request")
        batch.drop_column("step_id")

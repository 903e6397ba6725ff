"""The initial schema: runs, events, log_lines, log_cursors, request_ids.

Hand-written to match ``ledgerflow.coordinator.store._schema`` (a test compares the two
after upgrading, on Postgres and SQLite); the column invariants are documented there.

Revision ID: 0001
Revises:
Create Date: 2025-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the tables and indexes of the initial schema."""
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("workflow_name", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("parent_run_id", sa.Text(), nullable=True),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.Column("journal", sa.LargeBinary(), nullable=False),
        sa.Column("log_last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("log_stored_lines", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("log_stored_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("log_truncated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
    )
    op.create_index(
        "ix_runs_idempotency_key",
        "runs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_runs_create_time_run_id", "runs", ["create_time", "run_id"])
    op.create_index("ix_runs_status_create_time", "runs", ["status", "create_time"])

    op.create_table(
        "events",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("event_time", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_events")),
    )

    op.create_table(
        "log_lines",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("marker", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_log_lines")),
    )

    op.create_table(
        "log_cursors",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "channel", name=op.f("pk_log_cursors")),
    )

    op.create_table(
        "request_ids",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "request_id", name=op.f("pk_request_ids")),
    )


def downgrade() -> None:
    """Drop everything the initial schema created."""
    op.drop_table("request_ids")
    op.drop_table("log_cursors")
    op.drop_table("log_lines")
    op.drop_table("events")
    op.drop_index("ix_runs_status_create_time", table_name="runs")
    op.drop_index("ix_runs_create_time_run_id", table_name="runs")
    op.drop_index("ix_runs_idempotency_key", table_name="runs")
    op.drop_table("runs")

"""Steps move out of the run row: one ``run_steps`` row per step.

Until 0001 the ``runs`` row held the whole snapshot and journal, so every
append rewrote every step of the run (quadratic over a long run). From here the
row holds them without their per-step maps, and ``run_steps`` holds each step's
snapshot, final result and pending state. Existing rows are split in place.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from google.protobuf.message import Message

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tables() -> tuple[sa.TableClause, sa.TableClause]:
    runs = sa.table(
        "runs",
        sa.column("run_id", sa.Text()),
        sa.column("snapshot", sa.LargeBinary()),
        sa.column("journal", sa.LargeBinary()),
    )
    run_steps = sa.table(
        "run_steps",
        sa.column("run_id", sa.Text()),
        sa.column("step_id", sa.Text()),
        sa.column("snapshot", sa.LargeBinary()),
        sa.column("result", sa.LargeBinary()),
        sa.column("pending", sa.LargeBinary()),
    )
    return runs, run_steps


def _blob(message: Message | None) -> bytes | None:
    return None if message is None else message.SerializeToString(deterministic=True)


def upgrade() -> None:
    """Create ``run_steps`` and split every stored snapshot and journal into it."""
    from ledgerflow.v1 import journal_pb2, ledger_pb2

    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("pending", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "step_id", name=op.f("pk_run_steps")),
    )
    runs, run_steps = _tables()
    bind = op.get_bind()
    rows = bind.execute(sa.select(runs.c.run_id, runs.c.snapshot, runs.c.journal)).all()
    for run_id, snapshot_data, journal_data in rows:
        snapshot = ledger_pb2.RunSnapshot.FromString(snapshot_data)
        journal = journal_pb2.JournalSlice.FromString(journal_data)
        step_ids = set(snapshot.steps) | set(journal.step_results) | set(journal.pending_steps)
        if not step_ids:
            continue
        bind.execute(
            run_steps.insert(),
            [
                {
                    "run_id": run_id,
                    "step_id": step_id,
                    "snapshot": _blob(snapshot.steps.get(step_id)),
                    "result": _blob(journal.step_results.get(step_id)),
                    "pending": _blob(journal.pending_steps.get(step_id)),
                }
                for step_id in sorted(step_ids)
            ],
        )
        snapshot.ClearField("steps")
        journal.ClearField("step_results")
        journal.ClearField("pending_steps")
        bind.execute(
            runs.update()
            .where(runs.c.run_id == run_id)
            .values(snapshot=_blob(snapshot), journal=_blob(journal))
        )


def downgrade() -> None:
    """Fold every step row back into its run's snapshot and journal; drop ``run_steps``."""
    from ledgerflow.v1 import journal_pb2, ledger_pb2

    runs, run_steps = _tables()
    bind = op.get_bind()
    run_ids = bind.execute(sa.select(run_steps.c.run_id).distinct()).scalars().all()
    for run_id in run_ids:
        head = bind.execute(
            sa.select(runs.c.snapshot, runs.c.journal).where(runs.c.run_id == run_id)
        ).one()
        snapshot = ledger_pb2.RunSnapshot.FromString(head.snapshot)
        journal = journal_pb2.JournalSlice.FromString(head.journal)
        steps = bind.execute(sa.select(run_steps).where(run_steps.c.run_id == run_id))
        for step in steps:
            if step.snapshot is not None:
                snapshot.steps[step.step_id].MergeFromString(step.snapshot)
            if step.result is not None:
                journal.step_results[step.step_id].MergeFromString(step.result)
            if step.pending is not None:
                journal.pending_steps[step.step_id].MergeFromString(step.pending)
        bind.execute(
            runs.update()
            .where(runs.c.run_id == run_id)
            .values(snapshot=_blob(snapshot), journal=_blob(journal))
        )
    op.drop_table("run_steps")

"""The coordinator's tables: one SQLAlchemy Core schema for Postgres and SQLite.

Every table's key starts with ``run_id``, so the schema shards by run (Citus)
without change. Times are integer nanoseconds since the epoch: exact, the same
on both dialects (SQLite has no timezone-aware timestamp), and what the protos
carry. Protos are stored serialized (deterministic serialization), so the
stored bytes of a snapshot can be compared with a fresh re-reduction.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    and_,
    text,
)

# Postgres BIGSERIAL-style ids are never used as sequences (identities leave gaps);
# every ordering column below is assigned by the appending transaction.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("workflow_name", Text, nullable=False),
    # The snapshot's namespace ("default" when its run_created named none); never changes.
    Column("namespace", Text, nullable=False, server_default=text("'default'")),
    # The snapshot's RunStatus, copied out for filtering; always equals snapshot.status.
    Column("status", SmallInteger, nullable=False),
    # Nanoseconds since the epoch of the run_created event.
    Column("create_time", BigInteger, nullable=False),
    # The snapshot's update_time (latest event time), for listing and WatchRuns.
    Column("update_time", BigInteger, nullable=False),
    # The highest seq in this run's ledger; 0 before the first event. Read and written
    # only under the run's row lock, which is what keeps seqs gapless and unique.
    Column("last_seq", BigInteger, nullable=False),
    # Unique per namespace among runs that have one (partial unique index below).
    Column("idempotency_key", Text, nullable=True),
    Column("parent_run_id", Text, nullable=True),
    # Serialized RunSnapshot reflecting events 1..last_seq, WITHOUT its `steps` map:
    # each step is a row of run_steps, so an append rewrites the steps it touched,
    # not every step of a long run. Head plus step rows is a cache that a
    # re-reduction of the events must reproduce exactly (`ledgerflow admin verify`).
    Column("snapshot", LargeBinary, nullable=False),
    # Serialized JournalSlice reflecting events 1..last_seq, without `step_results`
    # and `pending_steps` (also rows of run_steps); same invariant.
    Column("journal", LargeBinary, nullable=False),
    # Log retention counters (ledgerflow.ledger.RunLogState): the last line seq handed
    # out, the stored lines and bytes, and whether the retention cap was crossed.
    Column("log_last_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("log_stored_lines", BigInteger, nullable=False, server_default=text("0")),
    Column("log_stored_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("log_truncated", Boolean, nullable=False, server_default=text("false")),
    PrimaryKeyConstraint("run_id"),
)
Index(
    "ix_runs_namespace_idempotency_key",
    runs.c.namespace,
    runs.c.idempotency_key,
    unique=True,
    postgresql_where=runs.c.idempotency_key.isnot(None),
    sqlite_where=runs.c.idempotency_key.isnot(None),
)
# ListRuns pages newest first by (create_time, run_id), in one namespace or in all.
Index("ix_runs_create_time_run_id", runs.c.create_time, runs.c.run_id)
Index("ix_runs_namespace_create_time_run_id", runs.c.namespace, runs.c.create_time, runs.c.run_id)
Index("ix_runs_status_create_time", runs.c.status, runs.c.create_time)
# A parent's children (cancellation cascades to them).
Index(
    "ix_runs_parent_run_id",
    runs.c.parent_run_id,
    postgresql_where=runs.c.parent_run_id.isnot(None),
    sqlite_where=runs.c.parent_run_id.isnot(None),
)

run_steps = Table(
    "run_steps",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("step_id", Text, nullable=False),
    # Serialized StepSnapshot: the run snapshot's `steps[step_id]`, as of the run's
    # last_seq (rewritten in the same transaction as any event touching the step).
    Column("snapshot", LargeBinary, nullable=True),
    # Serialized StepJournalEntry: the journal's `step_results[step_id]`; NULL while
    # the step has no final result.
    Column("result", LargeBinary, nullable=True),
    # Serialized PendingStep: the journal's `pending_steps[step_id]`; NULL once the
    # step is final (or before it was scheduled or started).
    Column("pending", LargeBinary, nullable=True),
    PrimaryKeyConstraint("run_id", "step_id"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("run_id", Text, nullable=False),
    # Globally unique (a uuid4): workers name tasks by id alone.
    Column("task_id", Text, nullable=False),
    # TaskKind: 1 = workflow task (runs the body), 2 = step task (a remote step).
    Column("kind", SmallInteger, nullable=False),
    # What a worker must have registered to take it: the workflow name (workflow
    # tasks) or the step kind (step tasks).
    Column("queue", Text, nullable=False),
    # TaskStatus: 1 = pending (dispatchable from available_time), 2 = leased (a
    # worker holds it until lease_expire_time), 3 = done. A run has at most one
    # workflow task that is not done (partial unique index below).
    Column("status", SmallInteger, nullable=False),
    # Grows by one at every dispatch. Events and results are accepted only under
    # the task's current epoch while it is leased: that is the fencing.
    Column("lease_epoch", BigInteger, nullable=False),
    # Nanoseconds since the epoch; a pending task is not dispatched before it.
    Column("available_time", BigInteger, nullable=False),
    # Set while leased: when the lease ends unless a heartbeat extends it.
    Column("lease_expire_time", BigInteger, nullable=True),
    # The worker process and session holding the lease (while leased).
    Column("worker_id", Text, nullable=True),
    Column("session_id", Text, nullable=True),
    # For workflow tasks: the run's workflow-task dispatch count at the last dispatch.
    Column("invocation", BigInteger, nullable=False, server_default=text("0")),
    Column("create_time", BigInteger, nullable=False),
    # Step tasks only (null for workflow tasks): the step the task runs, and the
    # serialized StepRequest sent to the worker (its task id, epoch and attempt are
    # filled in at each dispatch).
    Column("step_id", Text, nullable=True),
    Column("step_request", LargeBinary, nullable=True),
    PrimaryKeyConstraint("run_id", "task_id"),
)
Index("ix_tasks_task_id", tasks.c.task_id, unique=True)
# Dispatch: the oldest available pending tasks of a queue.
Index("ix_tasks_status_queue_available_time", tasks.c.status, tasks.c.queue, tasks.c.available_time)
# Expiry sweep: leased tasks by expiry.
Index("ix_tasks_status_lease_expire_time", tasks.c.status, tasks.c.lease_expire_time)
Index(
    "ix_tasks_open_workflow_task",
    tasks.c.run_id,
    unique=True,
    postgresql_where=and_(tasks.c.kind == 1, tasks.c.status != 3),
    sqlite_where=and_(tasks.c.kind == 1, tasks.c.status != 3),
)

events = Table(
    "events",
    metadata,
    Column("run_id", Text, nullable=False),
    # Gapless per run, starting at 1; assigned inside the appending transaction.
    Column("seq", BigInteger, nullable=False),
    # The payload's oneof case (e.g. "step_started"), for filtering without parsing.
    Column("event_type", Text, nullable=False),
    Column("event_time", BigInteger, nullable=False),
    # The serialized LedgerEvent, seq included.
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("run_id", "seq"),
)

log_lines = Table(
    "log_lines",
    metadata,
    Column("run_id", Text, nullable=False),
    # The line's absolute per-run position from 1; gaps only where bodies were dropped
    # past the retention cap (those lines are counted, not stored).
    Column("seq", BigInteger, nullable=False),
    Column("channel", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("time", BigInteger, nullable=False),
    # True for lines ingestion wrote (gap and truncation notices).
    Column("marker", Boolean, nullable=False),
    PrimaryKeyConstraint("run_id", "seq"),
)

log_cursors = Table(
    "log_cursors",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("channel", Text, nullable=False),
    # How many of the channel's lines have been ingested: the next positional batch
    # is expected at this offset. Only grows.
    Column("next_offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "channel"),
)

request_ids = Table(
    "request_ids",
    metadata,
    Column("run_id", Text, nullable=False),
    # A producer's idempotency id: an AppendEvents batch_id, a SignalRun request_id
    # (prefixed by kind so the namespaces cannot collide).
    Column("request_id", Text, nullable=False),
    # The seqs the first request with this id appended to this run.
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "request_id"),
)

__all__ = [
    "events",
    "log_cursors",
    "log_lines",
    "metadata",
    "request_ids",
    "run_steps",
    "runs",
    "tasks",
]

"""``ledgerflow admin verify``: snapshots and journals are caches; check them against the ledger.

Each run's events are re-reduced from empty; the stored snapshot and journal
(the run row's head put back together with its step rows) must equal the
result byte for byte (deterministic serialization), and the
stored ``last_seq`` must be the ledger's length with no gap, and the row's
``namespace`` column (what isolation filters on) the snapshot's namespace. Reading a run
happens in one read transaction, so a run being appended to is seen either
before or after an append, never half-way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledgerflow.coordinator.store._engine import READ_ONLY
from ledgerflow.coordinator.store._schema import events, runs
from ledgerflow.coordinator.store._sql_runs import load_runs, namespace_of
from ledgerflow.ledger import (
    apply_event,
    apply_journal_event,
    empty_journal,
    empty_snapshot,
)
from ledgerflow.v1 import ledger_pb2 as pb


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A run whose stored state differs from its ledger.

    Attributes:
        run_id: The run.
        what: ``snapshot``, ``journal``, ``seqs`` or ``namespace``.
        detail: A one-line description.
    """

    run_id: str
    what: str
    detail: str


def _difference(fresh: Message, stored: Message) -> str | None:
    """Describe how ``stored`` differs from ``fresh`` (by top-level field), or None if equal."""
    if fresh.SerializeToString(deterministic=True) == stored.SerializeToString(deterministic=True):
        return None
    fields = sorted(
        f.name for f in fresh.DESCRIPTOR.fields if getattr(stored, f.name) != getattr(fresh, f.name)
    )
    return "differs in " + ", ".join(fields or ["encoding"])


async def _run_ids(engine: AsyncEngine, only: Sequence[str] | None) -> AsyncIterator[str]:
    if only:
        for run_id in only:
            yield run_id
        return
    after = ""
    while True:
        async with engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            page = (
                (
                    await conn.execute(
                        select(runs.c.run_id)
                        .where(runs.c.run_id > after)
                        .order_by(runs.c.run_id)
                        .limit(500)
                    )
                )
                .scalars()
                .all()
            )
        for run_id in page:
            yield run_id
        if len(page) < 500:
            return
        after = page[-1]


async def verify(
    engine: AsyncEngine, run_ids: Sequence[str] | None = None
) -> tuple[int, list[Mismatch]]:
    """Re-reduce every run (or ``run_ids``) and compare with what is stored.

    Args:
        engine: The database.
        run_ids: Runs to check; None checks them all.

    Returns:
        (runs checked, mismatches found). An unknown run id is reported as a mismatch.
    """
    checked = 0
    found: list[Mismatch] = []
    async for run_id in _run_ids(engine, run_ids):
        async with engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            try:
                row = (await load_runs(conn, [run_id])).get(run_id)
            except DecodeError as err:
                found.append(Mismatch(run_id, "snapshot", f"stored state does not decode: {err}"))
                checked += 1
                continue
            if row is None:
                found.append(Mismatch(run_id, "run", "no such run"))
                continue
            snapshot = empty_snapshot(run_id)
            journal = empty_journal()
            seq = 0
            gap = ""
            result = await conn.stream(
                select(events.c.data).where(events.c.run_id == run_id).order_by(events.c.seq)
            )
            async for (data,) in result:
                event = pb.LedgerEvent.FromString(data)
                seq += 1
                if event.seq != seq and not gap:
                    gap = f"expected seq {seq}, found {event.seq}"
                apply_event(snapshot, event)
                apply_journal_event(journal, event)
        checked += 1
        if gap or seq != row.last_seq:
            found.append(
                Mismatch(run_id, "seqs", gap or f"last_seq {row.last_seq}, ledger has {seq}")
            )
        if row.namespace != namespace_of(snapshot):
            found.append(
                Mismatch(
                    run_id,
                    "namespace",
                    f"column says {row.namespace!r}, the ledger {namespace_of(snapshot)!r}",
                )
            )
        for what, fresh, stored in (
            ("snapshot", snapshot, row.snapshot),
            ("journal", journal, row.journal),
        ):
            detail = _difference(fresh, stored)
            if detail is not None:
                found.append(Mismatch(run_id, what, detail))
    return checked, found

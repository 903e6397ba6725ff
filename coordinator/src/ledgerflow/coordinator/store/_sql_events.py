"""Named queries on the ``events``, ``log_lines``, ``log_cursors`` and ``request_ids`` tables."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.coordinator.store._dialect import insert_for
from ledgerflow.coordinator.store._schema import events, log_cursors, log_lines, request_ids
from ledgerflow.ledger import StoredLine
from ledgerflow.ledger._time import to_nanos
from ledgerflow.v1 import ledger_pb2


async def insert_events(conn: AsyncConnection, batch: Sequence[ledger_pb2.LedgerEvent]) -> None:
    """Insert events whose seqs the caller assigned under the run's lock (one statement)."""
    if not batch:
        return
    await conn.execute(
        events.insert(),
        [
            {
                "run_id": e.run_id,
                "seq": e.seq,
                "event_type": e.WhichOneof("payload") or "",
                "event_time": to_nanos(e.event_time),
                "data": e.SerializeToString(deterministic=True),
            }
            for e in batch
        ],
    )


async def page_events(
    conn: AsyncConnection, run_id: str, after_seq: int, limit: int
) -> list[ledger_pb2.LedgerEvent]:
    """Return up to ``limit`` events of a run with seq > ``after_seq``, in seq order."""
    rows = await conn.execute(
        select(events.c.data)
        .where(events.c.run_id == run_id, events.c.seq > after_seq)
        .order_by(events.c.seq)
        .limit(limit)
    )
    return [ledger_pb2.LedgerEvent.FromString(data) for (data,) in rows]


async def first_event_seq(conn: AsyncConnection, run_id: str, event_type: str) -> int | None:
    """Return the seq of a run's first event of ``event_type``, if any."""
    return (
        await conn.execute(
            select(events.c.seq)
            .where(events.c.run_id == run_id, events.c.event_type == event_type)
            .order_by(events.c.seq)
            .limit(1)
        )
    ).scalar_one_or_none()


async def load_cursors(
    conn: AsyncConnection, run_id: str, channels: Sequence[str]
) -> dict[str, int]:
    """Return the ingestion cursors of a run's channels (absent channels start at 0)."""
    if not channels:
        return {}
    rows = await conn.execute(
        select(log_cursors.c.channel, log_cursors.c.next_offset).where(
            log_cursors.c.run_id == run_id, log_cursors.c.channel.in_(set(channels))
        )
    )
    return dict(rows.tuples().all())


async def save_cursors(conn: AsyncConnection, run_id: str, cursors: dict[str, int]) -> None:
    """Upsert a run's channel cursors (the caller holds the run's lock)."""
    if not cursors:
        return
    # One cached statement run with many parameter sets: a multi-row VALUES clause
    # would be compiled anew for every row count (it dominated the append profile).
    insert = insert_for(conn)
    stmt = insert(log_cursors)
    stmt = stmt.on_conflict_do_update(
        index_elements=[log_cursors.c.run_id, log_cursors.c.channel],
        set_={"next_offset": stmt.excluded.next_offset},
    )
    await conn.execute(
        stmt, [{"run_id": run_id, "channel": c, "next_offset": o} for c, o in cursors.items()]
    )


async def insert_log_lines(
    conn: AsyncConnection, run_id: str, lines: Sequence[tuple[StoredLine, int]]
) -> None:
    """Insert stored log lines, each with its time, in one statement."""
    if not lines:
        return
    await conn.execute(
        log_lines.insert(),
        [
            {
                "run_id": run_id,
                "seq": line.seq,
                "channel": line.channel,
                "text": line.text,
                "time": time,
                "marker": line.marker,
            }
            for line, time in lines
        ],
    )


async def page_log_lines(
    conn: AsyncConnection, run_id: str, from_seq: int, limit: int
) -> list[ledger_pb2.LogLine]:
    """Return up to ``limit`` stored lines of a run with seq >= ``from_seq``, in order."""
    rows = await conn.execute(
        select(log_lines)
        .where(log_lines.c.run_id == run_id, log_lines.c.seq >= from_seq)
        .order_by(log_lines.c.seq)
        .limit(limit)
    )
    out: list[ledger_pb2.LogLine] = []
    for row in rows:
        line = ledger_pb2.LogLine(
            seq=row.seq, channel=row.channel, text=row.text, marker=row.marker
        )
        line.time.seconds, line.time.nanos = divmod(row.time, 1_000_000_000)
        out.append(line)
    return out


async def find_request(
    conn: AsyncConnection, run_ids: Sequence[str], request_id: str
) -> dict[str, tuple[int, int]]:
    """Return the (first_seq, last_seq) each run got from an earlier request with this id."""
    rows = await conn.execute(
        select(request_ids.c.run_id, request_ids.c.first_seq, request_ids.c.last_seq).where(
            request_ids.c.request_id == request_id, request_ids.c.run_id.in_(set(run_ids))
        )
    )
    return {run_id: (first, last) for run_id, first, last in rows}


async def record_request(
    conn: AsyncConnection, request_id: str, ranges: dict[str, tuple[int, int]]
) -> None:
    """Remember what a request appended, so a resend is answered without a second append."""
    if not ranges:
        return
    await conn.execute(
        request_ids.insert(),
        [
            {"run_id": run_id, "request_id": request_id, "first_seq": first, "last_seq": last}
            for run_id, (first, last) in ranges.items()
        ],
    )

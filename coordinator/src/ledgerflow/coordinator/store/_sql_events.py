"""Queries and group-commit writes on events, log_lines, log_cursors and request_ids."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.coordinator.store._dialect import Write
from ledgerflow.coordinator.store._schema import events, log_cursors, log_lines, request_ids
from ledgerflow.ledger import StoredLine
from ledgerflow.ledger._time import to_nanos
from ledgerflow.v1 import ledger_pb2


def insert_events(batch: Sequence[ledger_pb2.LedgerEvent]) -> Write:
    """Insert events whose seqs the caller assigned under the runs' locks.

    The primary key (run_id, seq) is the last line of defence for gapless seqs: an
    append computed from a stale view of a run conflicts here and is redone.
    """
    return Write(
        events,
        {
            "run_id": [e.run_id for e in batch],
            "seq": [e.seq for e in batch],
            "event_type": [e.WhichOneof("payload") or "" for e in batch],
            "event_time": [to_nanos(e.event_time) for e in batch],
            "data": [e.SerializeToString(deterministic=True) for e in batch],
        },
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


async def load_cursors(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Return every channel cursor of each of ``run_ids`` (runs without one are absent)."""
    if not run_ids:
        return {}
    rows = await conn.execute(
        select(log_cursors.c.run_id, log_cursors.c.channel, log_cursors.c.next_offset).where(
            log_cursors.c.run_id.in_(set(run_ids))
        )
    )
    out: dict[str, dict[str, int]] = {}
    for run_id, channel, offset in rows:
        out.setdefault(run_id, {})[channel] = offset
    return out


def save_cursors(cursors: dict[tuple[str, str], int]) -> Write:
    """Upsert channel cursors keyed by (run id, channel); the caller holds the runs' locks."""
    return Write(
        log_cursors,
        {
            "run_id": [r for r, _ in cursors],
            "channel": [c for _, c in cursors],
            "next_offset": list(cursors.values()),
        },
        update=("next_offset",),
    )


def insert_log_lines(lines: Sequence[tuple[str, StoredLine, int]]) -> Write:
    """Insert stored log lines, each as (run id, line, time)."""
    return Write(
        log_lines,
        {
            "run_id": [run_id for run_id, _, _ in lines],
            "seq": [line.seq for _, line, _ in lines],
            "channel": [line.channel for _, line, _ in lines],
            "text": [line.text for _, line, _ in lines],
            "time": [time for _, _, time in lines],
            "marker": [line.marker for _, line, _ in lines],
        },
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


async def find_requests(
    conn: AsyncConnection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, int]]:
    """Return (first_seq, last_seq) for each (run id, request id) an earlier request used."""
    if not keys:
        return {}
    wanted = set(keys)
    rows = await conn.execute(
        select(
            request_ids.c.run_id,
            request_ids.c.request_id,
            request_ids.c.first_seq,
            request_ids.c.last_seq,
        ).where(
            request_ids.c.run_id.in_({r for r, _ in wanted}),
            request_ids.c.request_id.in_({q for _, q in wanted}),
        )
    )
    return {
        (run_id, request_id): (first, last)
        for run_id, request_id, first, last in rows
        if (run_id, request_id) in wanted
    }


def record_requests(rows: Sequence[tuple[str, str, int, int]]) -> Write:
    """Remember what requests appended, as (run id, request id, first seq, last seq)."""
    return Write(
        request_ids,
        {
            "run_id": [r[0] for r in rows],
            "request_id": [r[1] for r in rows],
            "first_seq": [r[2] for r in rows],
            "last_seq": [r[3] for r in rows],
        },
    )

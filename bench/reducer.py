"""Throughput of the pure ledger core: reducer, journal projection, log ingestion.

The coordinator runs these inside every append transaction, so their per-event cost
bounds ingest throughput. Usage: ``python bench/reducer.py [--events N]``.
"""

from __future__ import annotations

import argparse
import platform
import time

from ledgerflow.ledger import (
    LogRetention,
    RunLogState,
    apply_event,
    apply_journal_event,
    empty_journal,
    empty_snapshot,
    ingest_log_batch,
    json_payload,
)
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb


def ledger(n: int) -> list[pb.LedgerEvent]:
    """A realistic mix: per step a start, two progress updates, a log batch and a completion."""
    events: list[pb.LedgerEvent] = []
    t = 1_700_000_000_000_000_000
    i = 0
    while len(events) < n:
        step = f"step-{i % 50}#{i // 50}"
        for case in (
            "step_started",
            "step_progress",
            "log_appended",
            "step_progress",
            "step_completed",
        ):
            t += 1_000_000
            e = pb.LedgerEvent(run_id="bench", seq=len(events) + 1, source=pb.EVENT_SOURCE_WORKER)
            set_nanos(e.event_time, t)
            if case == "step_started":
                e.step_started.step_id = step
                e.step_started.name = step
                e.step_started.attempt = 1
            elif case == "step_progress":
                e.step_progress.step_id = step
                e.step_progress.progress.completed = len(events) % 10
                e.step_progress.progress.total = 10
            elif case == "log_appended":
                e.log_appended.lines.extend(f"{step} line {k}" for k in range(5))
                e.log_appended.channel = step
                e.log_appended.channel_offset = 0
            else:
                e.step_completed.step_id = step
                e.step_completed.output.CopyFrom(json_payload({"i": i}))
            events.append(e)
        i += 1
    return events[:n]


def rate(label: str, n: int, seconds: float) -> None:
    """Print one result line."""
    print(f"{label:<28} {n / seconds:>12,.0f} events/s   {seconds / n * 1e6:7.2f} us/event")


def main() -> None:
    """Run the benchmark and print events per second for each fold."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    events = ledger(args.events)
    print(f"python {platform.python_version()} on {platform.machine()}, {len(events)} events")

    snap = empty_snapshot("bench")
    start = time.perf_counter()
    for e in events:
        apply_event(snap, e)
    rate("snapshot (apply_event)", len(events), time.perf_counter() - start)

    journal = empty_journal()
    start = time.perf_counter()
    for e in events:
        apply_journal_event(journal, e)
    rate("journal (apply_journal_event)", len(events), time.perf_counter() - start)

    logs = [e for e in events if e.HasField("log_appended")]
    state = RunLogState()
    retention = LogRetention()
    start = time.perf_counter()
    for e in logs:
        ingest_log_batch(e, state, retention)
    rate("log ingestion (5-line batches)", len(logs), time.perf_counter() - start)


if __name__ == "__main__":
    main()

"""WatchRun subscribers for ``bench/load.py``, in a process of their own.

Reads run ids on stdin, one a line, as ``bench/load.py`` starts the runs; EOF means
no more. Each of ``--watchers`` subscribers takes the newest run nobody has watched
yet (or, when there is none, joins the live run with the fewest subscribers),
follows it with ``Client.watch_run`` until its terminal snapshot, records what it
saw, and takes the next; the oldest unwatched runs are dropped beyond
``--backlog``, so subscribers follow live runs rather than work through finished
ones. A ``--slow-fraction`` of the subscribers, spread evenly (counting across
processes from ``--first-index``), are deliberately slow consumers: each sleeps
``--slow-delay`` seconds after every message before reading the next.

Prints a JSON line ``{"type": "progress", "open": N, "watches": N}`` every second,
and at the end (or on SIGTERM) ``{"type": "result", ...}`` with the raw samples
(milliseconds):

- ``first_ms``: from calling WatchRun to its first snapshot (``first_at``: when the
  call was made, wall clock);
- ``lag_ms`` / ``slow_lag_ms``: for every later snapshot, its receipt time minus its
  ``update_time`` (the newest event's time, stamped by the worker on this same
  machine): event → subscriber delivery, of the fast and the slow subscribers;
- counts of watches, snapshots, errors, and watches that ended before a terminal
  snapshot (with some of their run ids).

Usage: ``python bench/load_watch.py --address HOST:PORT [--watchers N] ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import signal
import sys
import time
from contextlib import aclosing
from typing import Any

from ledgerflow.client import Client
from ledgerflow.errors import LedgerflowError
from ledgerflow.v1 import ledger_pb2 as pb

TERMINAL = {
    pb.RUN_STATUS_COMPLETED,
    pb.RUN_STATUS_FAILED,
    pb.RUN_STATUS_CANCELLED,
    pb.RUN_STATUS_TIMED_OUT,
}


class Runs:
    """Which run a subscriber follows next.

    The newest run nobody has watched yet (at most ``backlog`` of them are kept);
    when there is none, the live run (watched, not yet seen to end) with the fewest
    subscribers, newest first: with fewer live runs than subscribers, several follow
    the same run, so every subscriber stays open while any run is live.
    """

    def __init__(self, backlog: int) -> None:
        self._unwatched: collections.deque[str] = collections.deque(maxlen=backlog)
        # Subscribers per live run, in start order.
        self._live: dict[str, int] = {}
        self._more = asyncio.Event()
        self.ended = False
        self.skipped = 0

    def add(self, run_id: str) -> None:
        """A run was started."""
        if len(self._unwatched) == self._unwatched.maxlen:
            self.skipped += 1
        self._unwatched.append(run_id)
        self._more.set()

    def end(self) -> None:
        """No more runs will be started."""
        self.ended = True
        self._more.set()

    async def take(self) -> str | None:
        """The run to follow next; None once no run is left and none will come."""
        while not self._unwatched and not self._live:
            if self.ended:
                return None
            self._more.clear()
            await self._more.wait()
        if self._unwatched:
            run_id = self._unwatched.pop()
        else:
            run_id = min(reversed(self._live), key=self._live.__getitem__)
        self._live[run_id] = self._live.get(run_id, 0) + 1
        return run_id

    def done(self, run_id: str, ended: bool) -> None:
        """A subscriber stopped following ``run_id``; ``ended``: it saw the run end."""
        if ended:
            self._live.pop(run_id, None)
        elif run_id in self._live:
            self._live[run_id] -= 1


class Stats:
    """What the subscribers of this process saw."""

    def __init__(self) -> None:
        self.first_ms: list[float] = []
        # When each of those subscriptions began (wall clock), to leave out the bursts.
        self.first_at: list[float] = []
        self.lag_ms: list[float] = []
        self.slow_lag_ms: list[float] = []
        self.open = 0
        self.watches = 0
        self.snapshots = 0
        # Snapshots per subscription: does the coordinator coalesce for a slow reader?
        self.per_watch: list[int] = []
        self.slow_per_watch: list[int] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.unfinished: list[str] = []
        self.unfinished_count = 0


async def subscriber(client: Client, runs: Runs, stats: Stats, slow: bool, delay: float) -> None:
    """Watch runs one after the other until none is left."""
    while (run_id := await runs.take()) is not None:
        stats.open += 1
        stats.watches += 1
        last: pb.RunSnapshot | None = None
        received = 0
        began = time.perf_counter()
        try:
            async with aclosing(client.watch_run(run_id)) as stream:
                async for snapshot in stream:
                    now = time.time()
                    if last is None:
                        stats.first_ms.append(round((time.perf_counter() - began) * 1000, 3))
                        stats.first_at.append(round(now - (time.perf_counter() - began), 3))
                    else:
                        sent = snapshot.update_time.ToNanoseconds() / 1e9
                        lags = stats.slow_lag_ms if slow else stats.lag_ms
                        lags.append(round((now - sent) * 1000, 3))
                    stats.snapshots += 1
                    received += 1
                    last = snapshot
                    if slow:
                        await asyncio.sleep(delay)
        except LedgerflowError as err:
            stats.errors[f"{type(err).__name__}: {err}"[:200]] += 1
        finally:
            stats.open -= 1
            (stats.slow_per_watch if slow else stats.per_watch).append(received)
        ended = last is not None and last.status in TERMINAL
        runs.done(run_id, ended)
        if not ended:
            stats.unfinished_count += 1
            if len(stats.unfinished) < 20:
                stats.unfinished.append(run_id)


async def read_run_ids(runs: Runs) -> None:
    """Feed the run ids arriving on stdin to ``runs``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        runs.add(line.decode().strip())
    runs.end()


def is_slow(index: int, fraction: float) -> bool:
    """Whether subscriber ``index`` is slow: a ``fraction`` of them, spread evenly."""
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def emit(record: dict[str, Any]) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def progress(stats: Stats) -> None:
    """Tell the parent how many subscriptions are open, every second."""
    while True:
        emit({"type": "progress", "open": stats.open, "watches": stats.watches})
        await asyncio.sleep(1)


async def main_async(args: argparse.Namespace) -> None:
    """Run the subscribers until every run id was watched, then report."""
    runs = Runs(args.backlog)
    stats = Stats()
    delay: float = args.slow_delay
    client = await Client.connect(args.address)
    reporter = asyncio.create_task(progress(stats))
    feeder = asyncio.create_task(read_run_ids(runs))
    subscribers = asyncio.gather(
        *(
            subscriber(
                client, runs, stats, is_slow(args.first_index + i, args.slow_fraction), delay
            )
            for i in range(args.watchers)
        )
    )
    # SIGTERM (bench/load.py hit its time cap): stop watching, report what was seen.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, subscribers.cancel)
    try:
        await subscribers
    except asyncio.CancelledError:
        stats.errors["stopped by SIGTERM (time cap)"] += 1
    finally:
        reporter.cancel()
        feeder.cancel()
        await client.close()
    emit(
        {
            "type": "result",
            "first_ms": stats.first_ms,
            "first_at": stats.first_at,
            "lag_ms": stats.lag_ms,
            "slow_lag_ms": stats.slow_lag_ms,
            "watches": stats.watches,
            "snapshots": stats.snapshots,
            "per_watch": stats.per_watch,
            "slow_per_watch": stats.slow_per_watch,
            "errors": dict(stats.errors),
            "unfinished": stats.unfinished,
            "unfinished_count": stats.unfinished_count,
            "skipped": runs.skipped,
        }
    )


def main() -> None:
    """Parse the arguments and watch."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--watchers", type=int, default=250)
    parser.add_argument("--first-index", type=int, default=0, help="of the first subscriber")
    parser.add_argument("--slow-fraction", type=float, default=0.1)
    parser.add_argument("--slow-delay", type=float, default=1.0, help="seconds between reads")
    parser.add_argument("--backlog", type=int, default=1000, help="unwatched run ids kept")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

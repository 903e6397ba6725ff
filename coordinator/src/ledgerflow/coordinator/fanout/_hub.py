"""In-process fan-out of committed changes to WatchRun, WatchRuns and TailLogs streams.

Subscribers never queue a backlog: each keeps only the latest snapshot per run
it has not sent yet (a slow subscriber is coalesced to the newest state), so
memory is bounded by the number of runs a subscriber watches, not by the rate
of commits. Offers are ordered by ``last_seq``: an older snapshot never
replaces a newer one, which also makes duplicate deliveries (a process's own
commit arriving again through Postgres NOTIFY) harmless.

A run can also be watched for its end only (``watch_run(..., terminal_only=True)``,
what a caller waiting for a result uses): such a subscription is offered nothing but
the terminal snapshot, so a run followed only that way costs no copy per commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ledgerflow.ledger import is_terminal
from ledgerflow.v1 import ledger_pb2 as pb


class _Subscription:
    """What both kinds of subscription share: a wake-up event and a closed flag."""

    __slots__ = ("_closed", "_ready")

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._closed = False

    def close(self) -> None:
        """Wake the subscriber for good: :meth:`next` returns None from now on."""
        self._closed = True
        self._ready.set()


class RunSubscription(_Subscription):
    """The latest not-yet-taken snapshot of one run."""

    __slots__ = ("_latest", "_seen")

    def __init__(self) -> None:
        """Create an empty subscription."""
        super().__init__()
        self._latest: pb.RunSnapshot | None = None
        self._seen = 0

    def offer(self, snapshot: pb.RunSnapshot) -> None:
        """Keep ``snapshot`` if it is newer than anything offered before."""
        if snapshot.last_seq <= self._seen:
            return
        self._seen = snapshot.last_seq
        self._latest = snapshot
        self._ready.set()

    async def next(self) -> pb.RunSnapshot | None:
        """Wait for and take the newest snapshot not taken yet; None once the hub closed."""
        while self._latest is None and not self._closed:
            self._ready.clear()
            await self._ready.wait()
        if self._closed:
            return None
        snapshot, self._latest = self._latest, None
        return snapshot


class ListSubscription(_Subscription):
    """The latest not-yet-taken snapshot of every run that changed, in change order."""

    __slots__ = ("_accepts", "_pending", "_seen")

    def __init__(self, accepts: Callable[[pb.RunSnapshot], bool]) -> None:
        """Create a subscription keeping only snapshots ``accepts`` returns True for."""
        super().__init__()
        self._accepts = accepts
        self._pending: dict[str, pb.RunSnapshot] = {}
        self._seen: dict[str, int] = {}

    def offer(self, snapshot: pb.RunSnapshot) -> None:
        """Keep ``snapshot`` if it matches and is newer than what was seen for its run."""
        if snapshot.last_seq <= self._seen.get(snapshot.run_id, 0):
            return
        self._seen[snapshot.run_id] = snapshot.last_seq
        if self._accepts(snapshot):
            # Re-inserting moves the run to the end: changes come out in order.
            self._pending.pop(snapshot.run_id, None)
            self._pending[snapshot.run_id] = snapshot
            self._ready.set()

    async def next(self) -> pb.RunSnapshot | None:
        """Wait for and take the oldest pending change; None once the hub closed."""
        while not self._pending and not self._closed:
            self._ready.clear()
            await self._ready.wait()
        if self._closed:
            return None
        run_id = next(iter(self._pending))
        return self._pending.pop(run_id)


class Hub:
    """Routes committed snapshots to the subscriptions of this process."""

    def __init__(self) -> None:
        """Create a hub with no subscribers."""
        self._runs: dict[str, set[RunSubscription]] = {}
        self._ends: dict[str, set[RunSubscription]] = {}
        self._lists: set[ListSubscription] = set()
        self.closed = False

    def close(self) -> None:
        """End every subscription (shutdown): their ``next()`` returns None."""
        self.closed = True
        for watched in (self._runs, self._ends):
            for subs in watched.values():
                for sub in subs:
                    sub.close()
        for lst in self._lists:
            lst.close()

    def wants(self, run_id: str, *, terminal: bool = True) -> bool:
        """Return whether anyone here would receive a change of ``run_id``.

        Args:
            run_id: The run that changed.
            terminal: Whether the change may have ended the run (True when unknown).
        """
        return bool(self._lists) or run_id in self._runs or (terminal and run_id in self._ends)

    def watched_runs(self) -> list[str]:
        """Return the ids of the runs watched one by one here."""
        return list(self._runs.keys() | self._ends.keys())

    def publish(self, snapshot: pb.RunSnapshot) -> None:
        """Offer a committed snapshot to every matching subscription."""
        for sub in self._runs.get(snapshot.run_id, ()):
            sub.offer(snapshot)
        if is_terminal(snapshot.status):
            for sub in self._ends.get(snapshot.run_id, ()):
                sub.offer(snapshot)
        for lst in self._lists:
            lst.offer(snapshot)

    @contextmanager
    def watch_run(self, run_id: str, *, terminal_only: bool = False) -> Iterator[RunSubscription]:
        """Subscribe to one run for the duration of the ``with`` block.

        Args:
            run_id: The run.
            terminal_only: Receive only its terminal snapshot, not every change.
        """
        sub = RunSubscription()
        if self.closed:
            sub.close()
        watched = self._ends if terminal_only else self._runs
        watched.setdefault(run_id, set()).add(sub)
        try:
            yield sub
        finally:
            subs = watched.get(run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del watched[run_id]

    @contextmanager
    def watch_runs(self, accepts: Callable[[pb.RunSnapshot], bool]) -> Iterator[ListSubscription]:
        """Subscribe to every run ``accepts`` matches for the duration of the ``with`` block."""
        sub = ListSubscription(accepts)
        if self.closed:
            sub.close()
        self._lists.add(sub)
        try:
            yield sub
        finally:
            self._lists.discard(sub)

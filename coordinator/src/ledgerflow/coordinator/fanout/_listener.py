"""Cross-process fan-out on Postgres: LISTEN for other coordinators' commits.

Every commit NOTIFYs ``"<last_seq> <run_id>"`` per touched run (see the store).
This listener holds its own, non-pooled asyncpg connection (a pooled one would
be handed to other work and lose the LISTEN), and for each announced run that
a subscriber here cares about, reads the committed snapshot and publishes it to
the hub. Loads are coalesced per run: a burst of commits to one run costs one
read. After a lost connection it reconnects and re-reads every watched run, since
notifications sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.engine import make_url

from ledgerflow.coordinator.fanout._hub import Hub
from ledgerflow.coordinator.store import NOTIFY_CHANNEL, Store

_log = logging.getLogger(__name__)


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """Turn a ``postgresql+asyncpg://`` SQLAlchemy URL into a DSN asyncpg accepts."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PostgresListener:
    """Feeds the hub with commits made by any coordinator process on the same database."""

    def __init__(
        self, dsn: str, store: Store, hub: Hub, on_other_commit: Callable[[], None] | None = None
    ) -> None:
        """Create the listener; call :meth:`start`.

        Args:
            dsn: The database to listen on.
            store: Where announced runs are read from.
            hub: Where they are published.
            on_other_commit: Called for every commit of another coordinator process
                (the dispatcher looks for tasks it may have queued).
        """
        self._dsn = dsn
        self._store = store
        self._hub = hub
        self._on_other_commit = on_other_commit
        self._dirty: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()

    async def start(self) -> None:
        """Connect and start listening; returns once the first LISTEN is in place."""
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="ledgerflow-listen"),
            asyncio.create_task(self._load_loop(), name="ledgerflow-listen-load"),
        ]
        await self._connected.wait()

    async def close(self) -> None:
        """Stop listening."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _on_notify(self, _conn: object, pid: int, _channel: str, payload: object) -> None:
        if pid in self._store.writer_pids:
            return  # This process's own commit: the hub has it already.
        if self._on_other_commit is not None:
            self._on_other_commit()
        seq_text, _, run_id = str(payload).partition(" ")
        # Our cached copy is older now: no stream may start from it (Store.peek_run).
        self._store.forget(run_id)
        if not run_id or not self._hub.wants(run_id):
            return
        seq = int(seq_text)
        if seq > self._dirty.get(run_id, 0):
            self._dirty[run_id] = seq
            self._wake.set()

    async def _listen_loop(self) -> None:
        import asyncpg  # only Postgres deployments need it

        delay = 0.1
        while True:
            lost = asyncio.Event()

            def on_lost(_conn: object, lost: asyncio.Event = lost) -> None:
                lost.set()

            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as err:
                _log.warning("LISTEN connection failed (%s); retrying", err.__class__.__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                conn.add_termination_listener(on_lost)
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                if self._connected.is_set():
                    # Reconnected: what was announced while we were away is lost; re-read,
                    # and trust no cached run.
                    self._store.forget()
                    for run_id in list(self._hub.watched_runs()):
                        self._dirty.setdefault(run_id, 0)
                    self._wake.set()
                self._connected.set()
                await lost.wait()
            finally:
                if not conn.is_closed():
                    await conn.close()

    async def _load_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            for run_id in dirty:
                try:
                    snapshot = await self._store.find_run(run_id)
                except Exception:
                    _log.warning("reading announced run %r failed", run_id, exc_info=True)
                    continue
                if snapshot is not None:
                    self._hub.publish(snapshot)

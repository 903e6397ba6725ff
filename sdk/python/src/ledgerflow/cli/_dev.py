"""``ledgerflow dev``: a coordinator and workers in one command, for development.

The coordinator runs in this process on an embedded SQLite file
(``.ledgerflow/dev.db`` unless ``--db`` says otherwise; ``--postgres URL`` for
Postgres), with the web dashboard on (``127.0.0.1:7171`` unless ``--http-listen``
says otherwise; ``--no-dashboard`` to leave it off). Each ``MODULE[:ATTR]`` is
served by a ``ledgerflow worker`` child process; with no module, the repository's
``examples`` package when the current directory has one. The command prints the
addresses once every worker is connected.

Why workers are child processes rather than tasks on the coordinator's loop: a step
that computes (or blocks the GIL) must not stall the coordinator, a worker that
crashes must not take the ledger with it, and a child is exactly what production
runs, drain and all.

Shutdown (Ctrl-C or SIGTERM): workers get one SIGTERM and drain (running tasks may
finish, the rest are handed back), then the coordinator stops. A second signal makes
the workers hand everything back at once. The children run in sessions of their own
so that a Ctrl-C in the terminal reaches them only through this process, once.

Exit status: 0 after a requested shutdown; 1 when a worker exited on its own (its
stderr says why); 2 when the command cannot start (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledgerflow.cli._common import CommandError
from ledgerflow.worker import DEFAULT_DRAIN_TIMEOUT

if TYPE_CHECKING:
    from ledgerflow.coordinator._server import Coordinator

DEFAULT_DEV_LISTEN = "127.0.0.1:7170"
"""Where ``ledgerflow dev`` listens unless ``--listen`` says otherwise."""
DEFAULT_DEV_DB = Path(".ledgerflow") / "dev.db"
"""The SQLite file of ``ledgerflow dev``, relative to the current directory."""
EXAMPLES_MODULE = "examples"
"""What ``ledgerflow dev`` serves when no module is given and ``./examples`` is a package."""

EXIT_WORKER_DIED = 1

# What the coordinator gives its streams on shutdown, once the workers are gone.
_SHUTDOWN_GRACE = 2.0
# How often startup checks whether every worker has connected (no event exposes it).
_READY_POLL = 0.02

_log = logging.getLogger("ledgerflow.dev")


def register(commands: Any) -> None:
    """Add the ``dev`` command to the top-level subcommands."""
    cmd = commands.add_parser(
        "dev",
        help="run a development coordinator and workers in one command",
        description=(
            "Run a coordinator (embedded SQLite by default) and a worker for each "
            "MODULE[:ATTR] (default: ./examples when it is a package), print the address, "
            "and stop everything cleanly on Ctrl-C or SIGTERM."
        ),
    )
    cmd.add_argument(
        "targets",
        nargs="*",
        metavar="MODULE[:ATTR]",
        help="what a worker serves, as for `ledgerflow worker` (repeatable; default: examples)",
    )
    cmd.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=DEFAULT_DEV_LISTEN,
        help="the coordinator's gRPC address (default %(default)s; port 0 picks a free one)",
    )
    store = cmd.add_mutually_exclusive_group()
    store.add_argument(
        "--db",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"the SQLite file (default ./{DEFAULT_DEV_DB}; created with its directory)",
    )
    store.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="use Postgres instead: postgresql://user:password@host/db",
    )
    cmd.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        default=None,
        help="where the web dashboard is served (default 127.0.0.1:7171; port 0 picks one)",
    )
    cmd.add_argument(
        "--no-dashboard", action="store_true", help="serve no web dashboard (gRPC only)"
    )
    cmd.add_argument(
        "--no-worker",
        action="store_true",
        help="run the coordinator only, even where ./examples exists",
    )
    cmd.set_defaults(handler=_dev)


@dataclass
class _Child:
    """A worker process and what it serves."""

    target: str
    process: asyncio.subprocess.Process
    forward: asyncio.Task[None] | None = field(default=None)


def _targets(args: argparse.Namespace) -> list[str]:
    if args.no_worker:
        if args.targets:
            raise CommandError("--no-worker and MODULE arguments contradict each other")
        return []
    if args.targets:
        return list(args.targets)
    if (Path.cwd() / EXAMPLES_MODULE / "__init__.py").is_file():
        return [EXAMPLES_MODULE]
    return []


def _database(args: argparse.Namespace) -> tuple[str, str]:
    """The database URL and how to show it."""
    if args.postgres:
        from ledgerflow.coordinator.store import create_engine

        try:
            shown = create_engine(args.postgres).url.render_as_string(hide_password=True)
        except ValueError as err:
            raise CommandError(f"--postgres: {err}") from err
        return args.postgres, f"postgres {shown}"
    path: Path = args.db if args.db is not None else DEFAULT_DEV_DB
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create {path.parent}: {err.strerror}") from err
    return f"sqlite+aiosqlite:///{path.resolve()}", f"sqlite {path}"


def _http_listen(args: argparse.Namespace) -> str | None:
    """The dashboard's address; on unless ``--no-dashboard``."""
    if args.no_dashboard:
        if args.http_listen is not None:
            raise CommandError("--no-dashboard and --http-listen contradict each other")
        return None
    from ledgerflow.coordinator._server import DEFAULT_HTTP_LISTEN
    from ledgerflow.coordinator.web import parse_listen

    listen: str = args.http_listen or DEFAULT_HTTP_LISTEN
    try:
        parse_listen(listen)
    except ValueError as err:
        raise CommandError(str(err)) from err
    return listen


def _dev(args: argparse.Namespace) -> int:
    try:
        from ledgerflow.coordinator._server import ServerConfig
    except ImportError as err:
        raise CommandError(
            f"the coordinator is not installed ({err.name} is missing): "
            "pip install 'ledgerflow[coordinator]'"
        ) from err
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--listen must be HOST:PORT, got {args.listen!r}")
    targets = _targets(args)
    url, shown = _database(args)
    config = ServerConfig(
        listen=args.listen,
        database_url=url,
        shutdown_grace=_SHUTDOWN_GRACE,
        http_listen=_http_listen(args),
    )
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    try:
        return asyncio.run(_Dev(config, targets, shown).run())
    except ValueError as err:  # a malformed database URL
        raise CommandError(str(err)) from err
    except OSError as err:
        raise CommandError(f"cannot start the coordinator: {err}") from err


class _Dev:
    """The coordinator, its workers, and the signals that stop them."""

    def __init__(self, config: Any, targets: list[str], database: str) -> None:
        self._config = config
        self._targets = targets
        self._database = database
        self._stop = asyncio.Event()
        self._signals = 0
        self._children: list[_Child] = []

    def _on_signal(self) -> None:
        self._signals += 1
        self._stop.set()
        if self._signals > 1:
            # Again: workers hand back what they run now instead of letting it finish.
            for child in self._children:
                _send(child.process, signal.SIGTERM)

    async def run(self) -> int:
        from ledgerflow.coordinator._server import Coordinator

        started = time.monotonic()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal)
        coordinator = Coordinator(self._config)
        try:
            await coordinator.start()
            host = self._config.listen.rpartition(":")[0]
            address = f"{host}:{coordinator.port}"
            dashboard = coordinator.web.url if coordinator.web is not None else None
            status = await self._serve(coordinator, address, dashboard, started)
        finally:
            await self._stop_workers()
            await coordinator.stop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        _say("ledgerflow dev: stopped")
        return status

    async def _serve(
        self, coordinator: Coordinator, address: str, dashboard: str | None, started: float
    ) -> int:
        for target in self._targets:
            await self._spawn(target, address)
        exited = asyncio.ensure_future(self._first_exit())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            ready = asyncio.ensure_future(self._connected(coordinator))
            await asyncio.wait({ready, exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not exited.done() and not stop.done():
                self._banner(address, dashboard, time.monotonic() - started)
                await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                return 0
            child = exited.result()
            _say(
                f"ledgerflow: the worker for {child.target} exited with status "
                f"{child.process.returncode}; stopping"
            )
            return EXIT_WORKER_DIED
        finally:
            exited.cancel()
            stop.cancel()

    async def _spawn(self, target: str, address: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ledgerflow.cli",
            "worker",
            target,
            "--address",
            address,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        child = _Child(target, process)
        child.forward = asyncio.ensure_future(_forward(process, f"worker {target} | "))
        self._children.append(child)

    async def _first_exit(self) -> _Child:
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self._children}
        if not waits:
            await asyncio.Event().wait()  # no worker: none can exit
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for wait in waits:
                wait.cancel()

    async def _connected(self, coordinator: Coordinator) -> None:
        # Readiness means runs started now are picked up now: every worker has a
        # session. The coordinator has no event for that, so look, briefly and often.
        def connected() -> int:
            dispatcher = coordinator.dispatcher
            return 0 if dispatcher is None else len(dispatcher.sessions)

        while connected() < len(self._children):  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(_READY_POLL)

    def _banner(self, address: str, dashboard: str | None, seconds: float) -> None:
        served = ", ".join(self._targets) if self._targets else "nothing (pass MODULE[:ATTR])"
        lines = [
            f"ledgerflow dev: ready in {seconds:.1f}s",
            f"  coordinator  {address}",
            f"  database     {self._database}",
            f"  workers      {served}",
            f"  dashboard    {dashboard or 'off'}",
            f"  try          ledgerflow run list --address {address}",
        ]
        if self._targets == [EXAMPLES_MODULE]:
            lines.append(
                f"               python -m examples.order_saga --address {address} [--fail-at ship]"
            )
        lines.append("  stop         Ctrl-C")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    async def _stop_workers(self) -> None:
        for child in self._children:
            if self._signals <= 1:  # after a second signal they already got theirs
                _send(child.process, signal.SIGTERM)
        for child in self._children:
            try:
                # The worker's own drain deadline, and then some: past it, it is stuck.
                await asyncio.wait_for(child.process.wait(), DEFAULT_DRAIN_TIMEOUT + 5)
            except TimeoutError:
                _send(child.process, signal.SIGKILL)
                await child.process.wait()
            if child.forward is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await child.forward


def _send(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


async def _forward(process: asyncio.subprocess.Process, prefix: str) -> None:
    """Copy a child's stderr to ours, a prefix on each line, until it closes."""
    assert process.stderr is not None
    async for raw in process.stderr:
        sys.stderr.write(prefix + raw.decode("utf-8", "replace").rstrip("\n") + "\n")
        sys.stderr.flush()


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()

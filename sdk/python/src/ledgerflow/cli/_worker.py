"""``ledgerflow worker MODULE[:ATTR]``: serve a module's workflows until SIGTERM.

As uvicorn does, the current directory goes first on ``sys.path`` and ``MODULE``
is imported from there. Without ``ATTR`` every ``@workflow.defn`` definition that
is a global of the module is served; with it, ``ATTR`` (dotted for nested
attributes) names a ``Worker`` (run as configured), a ``workflow.Registry`` or
one workflow definition.

SIGTERM or SIGINT drains the worker (running tasks get ``--drain-timeout``
seconds to finish, the rest are handed back) and the command exits 0; a second
signal hands everything back at once. Exit status 2: the target cannot be
imported or serves nothing (one line on stderr); 1: the coordinator refused the
worker.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from ledgerflow.cli._common import (
    CommandError,
    add_connection_flags,
    add_namespace_flag,
    connection_settings,
)
from ledgerflow.cli._run import DEFAULT_ADDRESS
from ledgerflow.errors import LedgerflowError, WorkflowUsageError
from ledgerflow.worker import DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_CONCURRENT_TASKS, Worker
from ledgerflow.workflow import Registry, WorkflowDefinition

EXIT_REFUSED = 1

_log = logging.getLogger("ledgerflow.worker")


def register(commands: Any) -> None:
    """Add the ``worker`` command to the top-level subcommands."""
    cmd = commands.add_parser(
        "worker",
        help="serve the workflows of a Python module",
        description=(
            "Import MODULE from the current directory and serve its workflows on a "
            "coordinator: every @workflow.defn of the module, or ATTR (a Worker, a "
            "workflow.Registry or one workflow definition). SIGTERM or SIGINT drains: "
            "running tasks may finish, the rest are handed back."
        ),
    )
    cmd.add_argument("target", metavar="MODULE[:ATTR]", help="e.g. app.workflows or app:worker")
    # None means "not given": a Worker object is configured in code, and giving these
    # for one is an error rather than silently ignored.
    cmd.add_argument(
        "--address",
        metavar="HOST:PORT",
        default=None,
        help=f"the coordinator (env LEDGERFLOW_ADDRESS; default {DEFAULT_ADDRESS})",
    )
    add_connection_flags(cmd)
    add_namespace_flag(
        cmd, "run only tasks of runs in this namespace", "the token's namespace, else all"
    )
    cmd.add_argument(
        "--max-concurrent-tasks",
        type=_positive_int,
        default=None,
        metavar="N",
        help=(
            "workflow tasks run at once (env LEDGERFLOW_MAX_CONCURRENT_TASKS; "
            f"default {DEFAULT_MAX_CONCURRENT_TASKS})"
        ),
    )
    cmd.add_argument(
        "--identity", default=None, help="a name for people, e.g. the pod (default host:pid)"
    )
    cmd.add_argument(
        "--drain-timeout",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help=(
            "on SIGTERM, how long running tasks may take to finish before they are handed "
            f"back (default {DEFAULT_DRAIN_TIMEOUT:g})"
        ),
    )
    cmd.set_defaults(handler=_worker)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _worker(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    worker = _build_worker(target, args)
    _configure_logging()
    status = 0
    try:
        _run_loop(worker)
    except LedgerflowError as err:
        sys.stderr.write(f"ledgerflow: {err}\n")
        status = EXIT_REFUSED
    others = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    # Closing the loop shut its executor down: idle threads leave within moments;
    # only a sync step still running stays.
    deadline = time.monotonic() + 0.5
    for thread in others:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t for t in others if t.is_alive()]
    if stuck:
        # A sync step function cannot be interrupted, and interpreter exit would join its
        # thread: leave without waiting (its task was handed back or its lease expires).
        _log.warning("exiting while %d step thread(s) still run", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _run_loop(worker: Worker) -> None:
    # Not asyncio.run: it ends by joining the default executor's threads, which would
    # wait for a sync step that a drain already handed back.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(worker))
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def load_target(spec: str) -> Worker | Registry:
    """Import ``MODULE[:ATTR]`` from the current directory and return what to serve.

    Args:
        spec: ``module`` or ``module:attr`` (``attr`` may be dotted).

    Returns:
        The ``Worker`` named by ``attr``, or a registry of the workflows to serve.

    Raises:
        CommandError: The module cannot be imported, the attribute is missing or of
            another kind, or there is no workflow to serve.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or (":" in spec and not attr):
        raise CommandError(f"{spec!r} is not MODULE or MODULE:ATTR")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (
            module_name == err.name or module_name.startswith(f"{err.name}.")
        ):
            raise CommandError(f"cannot import {module_name!r}: no such module in {cwd}") from err
        raise CommandError(f"cannot import {module_name!r}: {_describe(err)}") from err
    except Exception as err:
        raise CommandError(f"cannot import {module_name!r}: {_describe(err)}") from err
    try:
        if not attr:
            registry = Registry.from_module(module)
            if not len(registry):
                raise CommandError(
                    f"no workflows found in module {module_name!r} "
                    "(decorate workflow bodies with @workflow.defn)"
                )
            return registry
        found: Any = module
        for part in attr.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                raise CommandError(f"module {module_name!r} has no attribute {attr!r}") from None
        if isinstance(found, Worker | Registry):
            if isinstance(found, Registry) and not len(found):
                raise CommandError(f"{spec} is an empty workflow.Registry")
            return found
        if isinstance(found, WorkflowDefinition):
            return Registry([found])
    except WorkflowUsageError as err:
        raise CommandError(f"{spec}: {err}") from err
    raise CommandError(
        f"{spec} is a {type(found).__name__}, not a Worker, a workflow.Registry "
        "or a workflow definition"
    )


def _describe(err: BaseException) -> str:
    # One line, but with where it happened: the user's module raised while importing.
    where = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" ({err.filename}:{err.lineno})"
    else:
        frames = traceback.extract_tb(err.__traceback__)
        if frames:
            where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    message = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {message}{where}" if message else f"{type(err).__name__}{where}"


def _build_worker(target: Worker | Registry, args: argparse.Namespace) -> Worker:
    if isinstance(target, Worker):
        given = [
            flag
            for flag, value in (
                ("--address", args.address),
                ("--max-concurrent-tasks", args.max_concurrent_tasks),
                ("--identity", args.identity),
                ("--drain-timeout", args.drain_timeout),
                ("--token", args.token),
                ("--tls-ca", args.tls_ca),
                ("--namespace", args.namespace),
            )
            if value is not None
        ]
        if given:
            raise CommandError(
                f"{args.target} is a Worker, configured in code: "
                f"{', '.join(given)} cannot change it"
            )
        return target
    address = args.address or os.environ.get("LEDGERFLOW_ADDRESS") or DEFAULT_ADDRESS
    max_tasks = args.max_concurrent_tasks
    if max_tasks is None:
        env = os.environ.get("LEDGERFLOW_MAX_CONCURRENT_TASKS", "")
        try:
            max_tasks = _positive_int(env) if env else DEFAULT_MAX_CONCURRENT_TASKS
        except argparse.ArgumentTypeError as err:
            raise CommandError(f"LEDGERFLOW_MAX_CONCURRENT_TASKS: {err}") from None
    drain_timeout = DEFAULT_DRAIN_TIMEOUT if args.drain_timeout is None else args.drain_timeout
    settings = connection_settings(args)
    return Worker(
        address,
        target,
        max_concurrent_tasks=max_tasks,
        identity=args.identity or "",
        drain_timeout=drain_timeout,
        namespace=settings.namespace,
        token=settings.token,
        credentials=settings.credentials,
    )


def _configure_logging() -> None:
    # The worker logs what an operator needs (connections, releases, refusals) at INFO.
    # Left alone when the user's module configured logging at import.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if signals == 1:
            _log.info("%s: draining (again to hand every task back now)", name)
            worker.drain(reason=f"the worker got {name}")
        else:
            worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

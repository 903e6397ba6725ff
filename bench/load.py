"""Load and soak: many workers, many runs, many WatchRun subscribers, bounded in time.

Starts ``ledgerflow server`` on a private PostgreSQL cluster (on disk, fsync on),
then:

- ``--workers`` worker sessions, hosted ``--worker-procs`` processes
  (``bench/load_app.py``: several ``Worker``s per process, each with its own
  connection and ``Connect`` stream), serving ``load``: ``--steps`` quick async
  steps with a log line after each (``--step-delay`` makes each step sleep, for
  longer-lived runs at the same CPU cost);
- ``--watchers`` WatchRun subscribers in ``--watcher-procs`` processes
  (``bench/load_watch.py``), each following one live run after another; a
  ``--slow-fraction`` of them sleep ``--slow-delay`` seconds between messages;
- from this process, ``--runs`` runs started through the async ``Client``, each with
  an idempotency key (a failed start is retried with the same key, so a retry cannot
  start a second run), at most ``--in-flight`` unfinished at once and at most
  ``--rate`` starts a second (0: as fast as the coordinator accepts); one
  ``WatchRuns`` stream counts the runs that end.

Every second it samples the coordinator's RSS (``VmRSS``) and CPU, the CPU of
Postgres, the workers, the subscribers, this process and everything else on the
machine, and prints a line every 10 s.
The load phase ends when every run has ended or after ``--duration`` seconds,
whichever comes first; hitting the cap is reported loudly and fails the script.

Then it checks that nothing was lost: ``ledgerflow admin verify`` (every ledger
gapless and equal to its re-reduction; ``verify`` of ``tests/faults/harness.py``),
and for every run the per-run checks of ``harness.assert_sound``, made exact for this
workload and counted rather than stopping at the first failure: the run completed with
the expected result, its events are gapless, each of its steps completed exactly once,
its log holds exactly one line per step; the database holds exactly ``--runs`` runs;
every subscription ended on a terminal snapshot.

Figures: runs/s and steps/s over the load phase; start → complete latency p50/p99
(the run's ``finish_time - create_time``); the step cycle p50/p99 (from one step's
completion to the next's: the step's result made durable, the log line, the next
step run); StartRun call latency; WatchRun first-snapshot latency and event →
subscriber delivery lag, fast and slow subscribers apart.

Usage: ``python bench/load.py [--runs N] [--workers N] [--watchers N] ...``; ``--smoke``
is a quick small run (200 runs, 5 workers, 20 subscribers).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import REPO, cpu_seconds, machine, pct, rss_bytes, start, start_server
from bench.load_app import expected_result
from tests.faults.harness import TERMINAL, verify
from tests.pg_cluster import PgCluster, find_bindir

from ledgerflow.client import Client
from ledgerflow.errors import CoordinatorUnavailableError, LedgerflowError
from ledgerflow.ledger import payload_value
from ledgerflow.v1 import ledger_pb2 as pb

APP = REPO / "bench" / "load_app.py"
WATCH = REPO / "bench" / "load_watch.py"

MIB = 1024 * 1024

FULL = {"runs": 10_000, "workers": 50, "watchers": 500}
SMOKE = {"runs": 200, "workers": 5, "watchers": 20}


@dataclass
class Sample:
    """One second of the time series."""

    t: float = 0.0
    rss: int = 0
    coordinator_cpu: float = 0.0
    postgres_cpu: float = 0.0
    workers_cpu: float = 0.0
    watchers_cpu: float = 0.0
    bench_cpu: float = 0.0
    busy: float = 0.0
    started: int = 0
    ended: int = 0
    subscribers: int = 0
    subscriptions: int = 0


@dataclass
class Progress:
    """What the load phase has done so far (shared by its tasks)."""

    began: float = 0.0
    began_wall: float = 0.0
    started: dict[int, str] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    start_ms: list[float] = field(default_factory=list)
    retries: int = 0
    retried: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0
    start_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    subscribers: dict[int, int] = field(default_factory=dict)
    subscriptions: dict[int, int] = field(default_factory=dict)
    watch_results: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    capped: bool = False
    load_seconds: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Checked:
    """The per-run checks' tally."""

    latency_ms: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    redispatched: int = 0
    problems: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    unfinished: int = 0
    redispatch_example: str = ""

    def problem(self, kind: str, run_id: str) -> None:
        """Count a problem of ``kind``, keeping the first run it happened to."""
        self.problems[kind] += 1
        self.examples.setdefault(kind, run_id)


class CpuMeter:
    """CPU cores a set of processes used since the last reading.

    Args:
        pids: The processes, asked anew at every reading (Postgres backends come and
            go); one that exited keeps counting its last reading.
    """

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids
        self._seen: dict[int, float] = {}
        self._last = self._total()
        self._at = time.monotonic()

    def _total(self) -> float:
        for pid in self._pids():
            with contextlib.suppress(OSError):  # it exited meanwhile
                self._seen[pid] = cpu_seconds(pid)
        return sum(self._seen.values())

    def cores(self) -> float:
        """Cores used since the previous call."""
        now, total = time.monotonic(), self._total()
        used = (total - self._last) / max(now - self._at, 1e-6)
        self._last, self._at = total, now
        return used


def postgres_pids(data_dir: Path) -> list[int]:
    """The postmaster of ``data_dir`` and its children (backends, WAL writer, ...)."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return []
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
    return pids


class BusyMeter:
    """Busy cores of the whole machine since the last reading (/proc/stat)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    def cores(self) -> float:
        """Busy cores since the previous call."""
        total, idle = self._read()
        d_total, d_idle = total - self._last[0], idle - self._last[1]
        self._last = (total, idle)
        return (os.cpu_count() or 1) * (d_total - d_idle) / max(d_total, 1)


async def sample(
    progress: Progress,
    server: int,
    data_dir: Path,
    workers: Sequence[int],
    watchers: Sequence[int],
) -> None:
    """Append a :class:`Sample` every second; print one every 10 s."""
    coordinator = CpuMeter(lambda: [server])
    postgres = CpuMeter(lambda: postgres_pids(data_dir))
    worker_cpu, watcher_cpu = CpuMeter(lambda: workers), CpuMeter(lambda: watchers)
    bench = CpuMeter(lambda: [os.getpid()])
    busy = BusyMeter()
    while server_alive(server):
        await asyncio.sleep(1)
        row = Sample(
            t=time.monotonic() - progress.began,
            rss=rss_bytes(server),
            coordinator_cpu=coordinator.cores(),
            postgres_cpu=postgres.cores(),
            workers_cpu=worker_cpu.cores(),
            watchers_cpu=watcher_cpu.cores(),
            bench_cpu=bench.cores(),
            busy=busy.cores(),
            started=len(progress.started),
            ended=len(progress.ended),
            subscribers=sum(progress.subscribers.values()),
            subscriptions=sum(progress.subscriptions.values()),
        )
        progress.samples.append(row)
        if len(progress.samples) % 10 == 0:
            print(f"  {format_sample(row, progress.samples)}", flush=True)


def server_alive(pid: int) -> bool:
    """Whether the coordinator still runs (sampling stops, loudly, if it died)."""
    if Path(f"/proc/{pid}").exists():
        return True
    print(f"!! the coordinator (pid {pid}) is gone", flush=True)
    return False


def format_sample(row: Sample, samples: Sequence[Sample]) -> str:
    """One line of the time series, with the runs/s of the 10 s before it."""
    earlier = [s for s in samples if s.t <= row.t - 10]
    base = earlier[-1] if earlier else Sample()
    rate = (row.ended - base.ended) / max(row.t - base.t, 1e-6)
    subs_rate = (row.subscriptions - base.subscriptions) / max(row.t - base.t, 1e-6)
    ours = (
        row.coordinator_cpu + row.postgres_cpu + row.workers_cpu + row.watchers_cpu + row.bench_cpu
    )
    return (
        f"{row.t:6.0f} {row.started:>7,} {row.ended:>7,} {rate:>6.1f} {row.rss / MIB:>7.1f} "
        f"{row.coordinator_cpu:>5.2f} {row.postgres_cpu:>5.2f} {row.workers_cpu:>5.2f} "
        f"{row.watchers_cpu:>5.2f} {row.bench_cpu:>5.2f} {max(0.0, row.busy - ours):>5.2f} "
        f"{row.subscribers:>5} {subs_rate:>6.0f}"
    )


# runs/s and new/s (WatchRun subscriptions opened) are over the 10 s before the row. CPU
# columns are cores: the coordinator, Postgres (all its processes), the worker and
# subscriber processes, this process (starts, WatchRuns), and everything else on the
# machine (other people's work included). open: subscriptions open.
HEADER = (
    f"{'t (s)':>6} {'started':>7} {'ended':>7} {'runs/s':>6} {'RSS MiB':>7} "
    f"{'coord':>5} {'pg':>5} {'wrkrs':>5} {'subs':>5} {'bench':>5} {'other':>5} {'open':>5} "
    f"{'new/s':>6}"
)


async def count_ended(client: Client, progress: Progress) -> None:
    """Follow every run that ends (one WatchRuns stream; resumed if it breaks)."""
    terminal = ["completed", "failed", "cancelled", "timed_out"]
    first = True
    while True:
        try:
            async for summary in client.watch_runs(statuses=terminal, include_existing=not first):
                first = False
                if summary.run_id not in progress.ended:
                    progress.ended[summary.run_id] = time.monotonic() - progress.began
                    progress.changed.set()
        except CoordinatorUnavailableError as err:
            print(f"WatchRuns broke ({err}); resuming", flush=True)
        first = False
        await asyncio.sleep(0.5)


async def start_runs(
    client: Client,
    args: argparse.Namespace,
    progress: Progress,
    feeds: Sequence[asyncio.StreamWriter],
) -> None:
    """Start ``args.runs`` runs: bounded in flight and in rate, retried with their key."""
    slots = asyncio.Semaphore(args.start_concurrency)
    next_at = time.monotonic()

    async def one(i: int) -> None:
        try:
            for attempt in range(6):
                began = time.perf_counter()
                try:
                    handle = await client.start(
                        "load",
                        {"steps": args.steps, "step_delay": args.step_delay},
                        idempotency_key=f"load-{i}",
                    )
                except CoordinatorUnavailableError as err:
                    progress.retries += 1
                    progress.retried[type(err).__name__] += 1
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                progress.start_ms.append((time.perf_counter() - began) * 1000)
                if not handle.created:
                    progress.duplicates += 1
                progress.started[i] = handle.run_id
                if feeds:
                    feeds[i % len(feeds)].write(f"{handle.run_id}\n".encode())
                return
            progress.start_errors["gave up after 6 attempts"] += 1
        except LedgerflowError as err:
            progress.start_errors[f"{type(err).__name__}: {err}"[:120]] += 1
        finally:
            slots.release()

    pending: set[asyncio.Task[None]] = set()
    for i in range(args.runs):
        while (
            args.in_flight
            and len(progress.started) + len(pending) - len(progress.ended) >= args.in_flight
        ):
            progress.changed.clear()
            await progress.changed.wait()
        if args.rate:
            next_at += 1 / args.rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await slots.acquire()
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)


async def read_watchers(proc: asyncio.subprocess.Process, index: int, progress: Progress) -> None:
    """Follow a subscriber process's JSON lines: open counts, then its result."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        try:
            record = json.loads(line)
        except ValueError:
            print(f"!! subscriber process {index} wrote {line[:200]!r}", flush=True)
            continue
        if record["type"] == "progress":
            progress.subscribers[index] = record["open"]
            progress.subscriptions[index] = record["watches"]
        elif record["type"] == "result":
            progress.subscribers[index] = 0
            progress.watch_results.append(record)


async def wait_ready(proc: subprocess.Popen[str], seconds: float) -> None:
    """Wait (at most ``seconds``) for a worker process's ``ready`` line."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), seconds)
    assert line.startswith("ready"), f"worker process {proc.pid} did not start: {line!r}"


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive counts."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def check_runs(
    client: Client, args: argparse.Namespace, run_ids: Sequence[str], checked: Checked
) -> None:
    """The per-run checks (see the module docstring), 16 runs at a time."""
    expected_steps = {f"s{i}" for i in range(args.steps)}
    result = expected_result(args.steps)
    slots = asyncio.Semaphore(16)

    async def one(run_id: str) -> None:
        async with slots:
            snap = await client.get_run(run_id)
            if snap.status not in TERMINAL:
                checked.unfinished += 1
                return
            events = [e async for e in client.iter_events(run_id)]
            lines = [line async for line in client.tail_logs(run_id)]
        if snap.status != pb.RUN_STATUS_COMPLETED:
            checked.problem(f"ended {pb.RunStatus.Name(snap.status)}", run_id)
        elif payload_value(snap.result) != result:
            checked.problem("wrong result", run_id)
        if [e.seq for e in events] != list(range(1, len(events) + 1)):
            checked.problem("events not gapless", run_id)
        completed = collections.Counter(
            e.step_completed.step_id for e in events if e.HasField("step_completed")
        )
        if any(n != 1 for n in completed.values()):
            checked.problem("a step completed more than once", run_id)
        done = {s for s, step in snap.steps.items() if step.status == pb.STEP_STATUS_COMPLETED}
        if set(completed) != expected_steps or done != expected_steps:
            checked.problem("steps missing or extra", run_id)
        if [line.seq for line in lines] != list(range(1, len(lines) + 1)):
            checked.problem("log seqs not gapless", run_id)
        if not snap.total_log_count == len(lines) == args.steps:
            checked.problem("log lines lost or doubled", run_id)
        if sum(e.HasField("run_started") for e in events) > 1:
            checked.redispatched += 1
            if not checked.redispatch_example:
                checked.redispatch_example = describe(run_id, events)
        if snap.status == pb.RUN_STATUS_COMPLETED:
            checked.latency_ms.append(
                (snap.finish_time.ToNanoseconds() - snap.create_time.ToNanoseconds()) / 1e6
            )
            completions = [
                snap.steps[step_id].completion_time.ToNanoseconds()
                for step_id in sorted(done, key=lambda s: int(s[1:]))
            ]
            checked.step_ms += [(b - a) / 1e6 for a, b in itertools.pairwise(completions)]

    await asyncio.gather(*(one(r) for r in run_ids))


def describe(run_id: str, events: Sequence[pb.LedgerEvent]) -> str:
    """A run's ledger in one line per event: seq, ms since the first event, type."""
    t0 = events[0].event_time.ToNanoseconds() if events else 0
    lines = []
    for e in events:
        line = (
            f"    {e.seq:>3} {(e.event_time.ToNanoseconds() - t0) / 1e6:>9.1f} ms  "
            f"{e.WhichOneof('payload')}"
        )
        if e.HasField("run_started"):
            started = e.run_started
            line += f" (invocation {started.invocation}, worker {started.runtime.worker_id[:8]})"
        lines.append(line)
    return f"{run_id}:\n" + "\n".join(lines)


def stop_process(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(args: argparse.Namespace, database_url: str, data_dir: Path, logs: Path) -> bool:
    """Start everything, drive the load, check, report; True when all is well."""
    log_files = []

    def log(name: str) -> IO[str]:
        f = (logs / name).open("w")
        log_files.append(f)
        return f

    server, address = start_server(database_url, stderr=log("server.log"))
    worker_procs: list[subprocess.Popen[str]] = []
    watcher_procs: list[asyncio.subprocess.Process] = []
    progress = Progress()
    tasks: list[asyncio.Task[Any]] = []
    client = await Client.connect(address)
    ok = True
    try:
        for p, n in enumerate(split(args.workers, args.worker_procs)):
            worker_procs.append(
                start(
                    [
                        sys.executable,
                        str(APP),
                        "--address",
                        address,
                        "--workers",
                        str(n),
                        "--slots",
                        str(args.slots),
                        "--name",
                        f"load-p{p}",
                    ],
                    stderr=log(f"worker-{p}.log"),
                )
            )
        await asyncio.gather(*(wait_ready(w, 120) for w in worker_procs))
        first_index = 0
        for p, n in enumerate(split(args.watchers, args.watcher_procs) if args.watchers else []):
            watcher_procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(WATCH),
                    "--address",
                    address,
                    "--watchers",
                    str(n),
                    "--first-index",
                    str(first_index),
                    "--slow-fraction",
                    str(args.slow_fraction),
                    "--slow-delay",
                    str(args.slow_delay),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log(f"watch-{p}.log"),
                    # The result line carries every sample: far past the 64 KiB default.
                    limit=1 << 28,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )
            first_index += n
        print(
            f"{args.workers} worker sessions in {len(worker_procs)} processes "
            f"({args.slots} slots each); {args.watchers} subscribers in "
            f"{len(watcher_procs)} processes ({args.slow_fraction:.0%} slow: "
            f"{args.slow_delay:g} s per message); {args.runs:,} runs of {args.steps} steps "
            f"(step delay {args.step_delay:g} s), {args.start_concurrency} StartRun calls "
            f"at once, in flight <= {args.in_flight or 'any'}, rate <= {args.rate or 'any'}/s",
            flush=True,
        )
        idle_rss = rss_bytes(server.pid)
        progress.began, progress.began_wall = time.monotonic(), time.time()
        tasks.append(asyncio.create_task(count_ended(client, progress)))
        tasks.append(
            asyncio.create_task(
                sample(
                    progress,
                    server.pid,
                    data_dir,
                    [w.pid for w in worker_procs],
                    [w.pid for w in watcher_procs],
                )
            )
        )
        tasks += [
            asyncio.create_task(read_watchers(w, i, progress)) for i, w in enumerate(watcher_procs)
        ]
        print(HEADER, flush=True)
        feeds = [w.stdin for w in watcher_procs if w.stdin is not None]

        async def drive() -> None:
            await start_runs(client, args, progress, feeds)
            for feed in feeds:
                feed.close()
            while len(progress.ended) < len(progress.started):
                progress.changed.clear()
                await progress.changed.wait()

        try:
            await asyncio.wait_for(drive(), args.duration)
        except TimeoutError:
            progress.capped = True
        progress.load_seconds = time.monotonic() - progress.began
        for feed in feeds:
            if not feed.is_closing():
                feed.close()
        if progress.capped:
            # Stop: the workers hand their tasks back, the subscribers report what they saw.
            await asyncio.gather(*(asyncio.to_thread(stop_process, w) for w in worker_procs))
            for w in watcher_procs:
                w.terminate()
        # The subscribers finish the runs they follow; bounded, they may be stuck.
        waiting = [asyncio.create_task(w.wait()) for w in watcher_procs]
        if waiting:
            grace = 30.0
            _, late = await asyncio.wait(waiting, timeout=grace)
            for w in watcher_procs:
                if w.returncode is None:
                    w.kill()
            if late:
                print(f"{len(late)} subscriber process(es) killed after {grace:.0f} s", flush=True)
            await asyncio.sleep(0.2)  # their last lines
        # A few quiet seconds: does the coordinator give memory back once idle?
        await asyncio.sleep(args.cooldown)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ok = report_load(args, progress, idle_rss) and ok
        ok = await check(args, client, database_url, progress) and ok
    finally:
        await client.close()
        for w in watcher_procs:
            if w.returncode is None:
                w.kill()
                await w.wait()
        for proc in worker_procs:
            stop_process(proc)
        stop_process(server)
        for f in log_files:
            f.close()
    return ok


def print_logs(logs: Path) -> None:
    """Tasks the workers handed back, and the last lines above INFO of every process log."""
    released: collections.Counter[str] = collections.Counter()
    for path in sorted(logs.iterdir()):
        lines = path.read_text(errors="replace").splitlines()
        for line in lines:
            if " released task " in line:
                released[re.sub(r"\d+", "N", line.split("): ", 1)[-1])] += 1
        loud = [line for line in lines if line.strip() and " INFO " not in line]
        if loud:
            tail = "\n    ".join(loud[-5:])
            print(f"\n{path.name} ({len(loud)} lines above INFO), last lines:\n    {tail}")
    total = sum(released.values())
    print(f"\ntasks the workers handed back unstarted: {total:,}")
    for reason, n in released.most_common(5):
        print(f"    {n:>7,}  {reason}")


def quantiles(label: str, values: Sequence[float], unit: str = "ms") -> str:
    """A ``label  p50  p99  max  (n)`` line."""
    if not values:
        return f"{label:44} {'-':>9} {'-':>9} {'-':>9}   (no samples)"
    v = list(values)
    return (
        f"{label:44} {statistics.median(v):>9.1f} {pct(v, 0.99):>9.1f} {max(v):>9.1f}"
        f"   {unit}, n={len(v):,}"
    )


def report_load(args: argparse.Namespace, progress: Progress, idle_rss: int) -> bool:
    """Print the time series, throughput, start and watch figures, the memory verdict."""
    ok = True
    samples = progress.samples
    # At the cap the phase stops; what the coordinator committed after it is not counted.
    ended_times = [t for t in progress.ended.values() if t <= progress.load_seconds]
    ended = len(ended_times)
    print(f"\nTime series (every 10 % of {len(samples)} one-second samples):\n{HEADER}")
    picks = sorted({round(i * (len(samples) - 1) / 10) for i in range(11)}) if samples else []
    for i in picks:
        print(format_sample(samples[i], samples))
    if progress.capped:
        ok = False
        print(
            f"\n!!!!!!!! DURATION CAP HIT: stopped after {args.duration:.0f} s with "
            f"{len(progress.started):,} of {args.runs:,} runs started and {ended:,} ended. "
            "The figures below cover what finished. !!!!!!!!"
        )
    last_end = max(ended_times, default=0.0)
    print(f"\nLoad phase: {progress.load_seconds:.1f} s; last run ended at {last_end:.1f} s")
    if last_end:
        print(f"{'runs/s (ended / time to the last end)':44} {ended / last_end:>9.1f}")
        print(f"{'steps/s':44} {ended * args.steps / last_end:>9.1f}")
    print(f"{'':44} {'p50':>9} {'p99':>9} {'max':>9}")
    print(quantiles("StartRun call", progress.start_ms))
    results = progress.watch_results
    print(quantiles("WatchRun first snapshot", [x for r in results for x in r["first_ms"]]))
    # Leaves out the bursts: every subscriber subscribing at once when the first runs
    # appear, and piling onto the last live runs at the end.
    lo, hi = progress.began_wall + 10, progress.began_wall + last_end - 10
    steady = [
        ms
        for r in results
        for ms, at in zip(r["first_ms"], r["first_at"], strict=True)
        if lo <= at <= hi
    ]
    print(quantiles("  the same, leaving out the first and last 10 s", steady))
    print(quantiles("delivery lag, fast subscribers", [x for r in results for x in r["lag_ms"]]))
    print(
        quantiles("delivery lag, slow subscribers", [x for r in results for x in r["slow_lag_ms"]])
    )
    watches = sum(r["watches"] for r in results)
    print(
        f"start retries {progress.retries} ({dict(progress.retried) or 'none'}), "
        f"deduplicated starts {progress.duplicates}; subscriptions {watches:,} "
        f"({sum(r['snapshots'] for r in results):,} snapshots); peak subscribers open "
        f"{max((s.subscribers for s in samples), default=0)}"
    )
    fast = [x for r in results for x in r["per_watch"]]
    slow = [x for r in results for x in r["slow_per_watch"]]
    if fast and slow:
        print(
            f"snapshots per subscription: fast {statistics.mean(fast):.1f}, "
            f"slow {statistics.mean(slow):.1f} (mean)"
        )
    if progress.start_errors:
        ok = False
        print(f"!! runs that could not be started: {dict(progress.start_errors)}")
    if args.watchers and len(results) < args.watcher_procs:
        ok = False
        print(f"!! only {len(results)} of the subscriber processes reported")
    errors: collections.Counter[str] = collections.Counter()
    for r in results:
        errors.update(r["errors"])
    unfinished = sum(r["unfinished_count"] for r in results)
    if errors or unfinished:
        ok = False
        print(f"!! subscriptions with errors: {dict(errors)}")
        print(
            f"!! subscriptions that ended before a terminal snapshot: {unfinished} "
            f"(e.g. {[u for r in results for u in r['unfinished']][:5]})"
        )
    memory_verdict(samples, idle_rss, last_end)
    return ok


def memory_verdict(samples: Sequence[Sample], idle_rss: int, last_end: float) -> None:
    """RSS min/max/last, and whether it still grew over the second half of the load."""
    if not samples:
        return
    rss = [s.rss for s in samples]
    loaded = [s for s in samples if s.t <= last_end] or list(samples)
    half = [s for s in loaded if s.ended >= loaded[-1].ended / 2]
    print(
        f"\nCoordinator RSS (MiB): idle before load {idle_rss / MIB:.1f}; during and after "
        f"load min {min(rss) / MIB:.1f}, max {max(rss) / MIB:.1f}, last {rss[-1] / MIB:.1f} "
        f"(after {samples[-1].t - last_end:.0f} s idle)"
    )
    if len(half) >= 3 and half[-1].ended > half[0].ended:
        xs = [s.ended for s in half]
        ys = [s.rss / MIB for s in half]
        slope = statistics.linear_regression(xs, ys).slope * 1000
        grew = (half[-1].rss - half[0].rss) / MIB
        print(
            f"second half of the load ({half[0].ended:,} -> {half[-1].ended:,} runs ended): "
            f"RSS {half[0].rss / MIB:.1f} -> {half[-1].rss / MIB:.1f} MiB ({grew:+.1f}); "
            f"fitted slope {slope:+.2f} MiB per 1,000 runs"
        )
        peak = max(rss) / MIB
        verdict = (
            "flat (bounded)"
            if abs(slope) * (xs[-1] - xs[0]) / 1000 < max(0.05 * peak, 10)
            else "STILL GROWING: look for a per-run or per-subscription leak"
        )
        print(f"memory verdict: {verdict}")


async def check(
    args: argparse.Namespace, client: Client, database_url: str, progress: Progress
) -> bool:
    """Nothing lost: admin verify, every run's ledger, the number of runs stored."""
    print("\nChecking every run ...", flush=True)
    began = time.monotonic()
    checked = Checked()
    ok = True
    try:
        async with asyncio.timeout(args.check_timeout):
            try:
                out = await verify(database_url)
                print(f"admin verify: ok ({out.strip().splitlines()[-1] if out.strip() else ''})")
            except AssertionError as err:
                ok = False
                print(f"!! admin verify FAILED:\n{err}")
            await check_runs(client, args, list(progress.started.values()), checked)
            stored = sum([1 async for _ in client.iter_runs(page_size=1000)])
    except TimeoutError:
        print(f"!! the checks did not finish within {args.check_timeout:.0f} s")
        return False
    print(f"(checks took {time.monotonic() - began:.0f} s)")
    started = len(progress.started)
    completed = len(checked.latency_ms)
    print(
        f"runs: {args.runs:,} asked, {started:,} started, {stored:,} stored, "
        f"{completed:,} completed, {checked.unfinished:,} unfinished, "
        f"{checked.redispatched:,} dispatched more than once"
    )
    if checked.redispatch_example:
        print(f"a run dispatched more than once, its ledger: {checked.redispatch_example}")
    if stored != started or started != args.runs:
        ok = False
        print(f"!! runs stored ({stored:,}) != started ({started:,}) or != asked ({args.runs:,})")
    if checked.unfinished:
        ok = False
        print(f"!! {checked.unfinished:,} runs never ended")
    for kind, n in checked.problems.items():
        ok = False
        print(f"!! {kind}: {n:,} runs (e.g. {checked.examples[kind]})")
    if not checked.problems:
        print(
            "every ended run completed with the expected result, gapless events, each step "
            "completed exactly once, one log line per step"
        )
    print(f"{'':44} {'p50':>9} {'p99':>9} {'max':>9}")
    print(quantiles("run start -> complete", checked.latency_ms))
    print(quantiles("step cycle", checked.step_ms))
    return ok


def main() -> None:
    """Run the benchmark; exit 1 when the cap was hit or anything was lost."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="200 runs, 5 workers, 20 watchers")
    parser.add_argument("--runs", type=int, help=f"default {FULL['runs']:,}")
    parser.add_argument("--workers", type=int, help=f"worker sessions, default {FULL['workers']}")
    parser.add_argument("--watchers", type=int, help=f"subscribers, default {FULL['watchers']}")
    parser.add_argument("--worker-procs", type=int, default=5)
    parser.add_argument("--watcher-procs", type=int, default=2)
    parser.add_argument("--slots", type=int, default=10, help="task slots per worker session")
    parser.add_argument("--steps", type=int, default=5, help="steps per run")
    parser.add_argument(
        "--step-delay", type=float, default=0.0, help="seconds each step sleeps (longer runs)"
    )
    parser.add_argument("--slow-fraction", type=float, default=0.1)
    parser.add_argument("--slow-delay", type=float, default=1.0, help="seconds between reads")
    parser.add_argument("--in-flight", type=int, default=1000, help="unfinished runs; 0: any")
    parser.add_argument("--rate", type=float, default=0.0, help="starts per second; 0: any")
    parser.add_argument("--start-concurrency", type=int, default=8, help="StartRun calls at once")
    parser.add_argument("--duration", type=float, default=600.0, help="cap on the load phase (s)")
    parser.add_argument("--cooldown", type=float, default=10.0, help="idle seconds sampled after")
    parser.add_argument("--check-timeout", type=float, default=600.0)
    parser.add_argument("--log-dir", help="keep the processes' logs here (default: a temp dir)")
    args = parser.parse_args()
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    print(machine(), flush=True)
    cluster = PgCluster(find_bindir(), parent=str(REPO))
    cluster.init()
    try:
        url = cluster.create_database("bench")
        with tempfile.TemporaryDirectory() as tmp:
            logs = Path(args.log_dir) if args.log_dir else Path(tmp)
            logs.mkdir(parents=True, exist_ok=True)
            ok = asyncio.run(run(args, url, cluster.data_dir, logs))
            print_logs(logs)
    finally:
        cluster.destroy()
    if not ok:
        print("\nFAILED: see the lines marked !! above", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

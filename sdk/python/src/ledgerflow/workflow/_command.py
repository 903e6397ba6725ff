"""Command steps: ``ctx.run_command`` runs a subprocess as a durable step.

A port of the reference step runner (``shared/reference/001_*.txt``,
``runner.ts``) and its checkpoint helpers (``002_*.txt``, ``checkpoints.ts``)
onto the engine's steps. The engine runs :func:`run_command` as the step
function of a ``ctx.step`` of kind ``command``, so replay, attempts, retries and
timeouts are the engine's. This module is the one place of the workflow package
that touches the operating system (``os``, a subprocess): a command step is a
step function that ledgerflow ships, and like every step function it runs only
live, never on replay.

What one attempt records, in order (all through the engine's ordered sink):

- lifecycle lines on ``step:<id>:lifecycle`` (the reference's worker log:
  ``run_prepared``, ``worker_started``, ``worker_exited``, then
  ``step_completed`` / ``step_failed`` / ``step_blocked``);
- a ``summary`` checkpoint when the attempt starts;
- stdout and stderr lines on ``step:<id>:stdout`` and ``step:<id>:stderr``,
  batched while the command runs;
- a ``log_tail`` checkpoint when it ends: the last N lines of the three
  channels combined, in the order they were read, ``[stdout] ...`` etc.

Every channel is positional (``channel_offset`` = lines the channel emitted
before the batch, in this attempt). A command that runs again because a crash
interrupted its attempt writes the same channels from offset 0, so ingestion
drops the lines the ledger already holds and each position is stored once.
Retries are new attempts whose lines must all be kept, so attempt ``n > 1``
writes ``step:<id>:stdout@n`` and so on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ledgerflow.errors import LedgerflowError
from ledgerflow.ledger import build_log_events, json_payload
from ledgerflow.ledger._logs import without_nul
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.workflow._convert import to_jsonable

StrPath = str | os.PathLike[str]
"""A path: ``str`` or ``os.PathLike[str]``."""
CommandOutcome = Literal["completed", "failed", "blocked"]
"""How a command step ended (``StepOutcome`` in the protos)."""

RESULT_FILE_ENV = "LEDGERFLOW_RESULT_FILE"
"""The environment variable naming the file a command may write its result envelope to."""
DEFAULT_LOG_TAIL_LINES = 20
"""Lines the final log-tail checkpoint keeps by default (the reference's default)."""
COMMAND_STEP_KIND = "command"
"""The ``kind`` recorded in the step events of a command step."""

# A batch of lines leaves when it holds this many lines or bytes (and the reader
# waits for its commit, which bounds what a chatty command can queue), or when
# its first line is this old (so a quiet command's lines still show promptly).
MAX_BATCH_LINES = 256
MAX_BATCH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.2
# A "line" longer than this is cut: a binary blob on stdout must not grow one
# unbounded buffer.
_MAX_LINE_BYTES = 64 * 1024
_READ_CHUNK = 64 * 1024
# After SIGTERM to the process group, how long the command may take to exit
# before SIGKILL; and how long its pipes may stay open once it exited.
_KILL_GRACE = 2.0
_PIPE_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class CommandArtifact:
    """A file or directory a command step produced (``Artifact`` in the protos).

    Attributes:
        name: A short name.
        kind: e.g. ``file``, ``directory``, ``log``, ``report``.
        uri: Where it is (an absolute path or a URL).
        description: What it holds.
    """

    name: str
    kind: str = "file"
    uri: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class CommandMetrics:
    """Counters of the attempt that produced a result (``StepMetrics`` in the protos).

    Attributes:
        duration_ms: Wall time from preparing the attempt to its end.
        lifecycle_event_count: Lifecycle lines recorded.
        stdout_line_count: Lines read from stdout.
        stderr_line_count: Lines read from stderr.
        checkpoint_count: Checkpoints recorded.
    """

    duration_ms: int = 0
    lifecycle_event_count: int = 0
    stdout_line_count: int = 0
    stderr_line_count: int = 0
    checkpoint_count: int = 0


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The result envelope of a command step, as journaled and replayed.

    Attributes:
        outcome: ``completed``, ``failed`` (only returned with ``check=False``) or
            ``blocked`` (the command needs a person).
        exit_code: The process's exit status; ``-N`` when signal N ended it.
        summary: One line saying what happened (the command's own, or a default).
        needs_human: A person must act before the work can go on.
        attempt: The attempt that produced the result.
        artifacts: What the command produced.
        suggested_followups: Next actions the command proposes, for people.
        metrics: Counters of the attempt.
    """

    outcome: CommandOutcome
    exit_code: int
    summary: str = ""
    needs_human: bool = False
    attempt: int = 1
    artifacts: tuple[CommandArtifact, ...] = ()
    suggested_followups: tuple[str, ...] = ()
    metrics: CommandMetrics = field(default_factory=CommandMetrics)

    @property
    def ok(self) -> bool:
        """Whether the command completed."""
        return self.outcome == "completed"

    @property
    def blocked(self) -> bool:
        """Whether the command is blocked."""
        return self.outcome == "blocked"


class CommandFailedError(LedgerflowError):
    """A command step's command failed (the step fails, and is retried per its policy).

    Raised inside the step; the body gets ``StepFailedError`` with ``error_type ==
    "CommandFailedError"`` and code ``COMMAND_FAILED``, live and on replay. The
    recorded ``ErrorInfo.details`` holds the :class:`CommandResult` as JSON.

    Attributes:
        result: The attempt's result envelope (outcome ``failed``).
        exit_code: Shortcut for ``result.exit_code``.
    """

    code = "COMMAND_FAILED"

    def __init__(self, result: CommandResult) -> None:
        """Create the error.

        Args:
            result: The failed attempt's result.
        """
        super().__init__(result.summary)
        self.result = result
        self.exit_code = result.exit_code
        # Read by error_info: the envelope survives in the ledger with the failure.
        self.details: common_pb2.Payload = json_payload(to_jsonable(result))


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """What ``ctx.run_command`` was asked to run (arguments of the step function)."""

    argv: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    timeout: float | None = None
    check: bool = True
    blocked_exit_codes: frozenset[int] = frozenset()
    artifacts: tuple[str, ...] = ()
    log_tail_lines: int = DEFAULT_LOG_TAIL_LINES
    checkpoints: bool = True
    summary: str | None = None


class CommandHost(Protocol):
    """What a command step needs from the running execution."""

    @property
    def run_id(self) -> str:
        """The run."""
        ...

    @property
    def step_id(self) -> str:
        """The step."""
        ...

    @property
    def attempt(self) -> int:
        """The attempt being run."""
        ...

    def now_ns(self) -> int:
        """The wall clock (event times)."""
        ...

    def post(self, events: Sequence[pb.LedgerEvent]) -> None:
        """Send events without waiting for their commit."""
        ...

    async def commit(self, events: Sequence[pb.LedgerEvent]) -> None:
        """Send events and wait for their commit."""
        ...

    def checkpoint(
        self, summary: str, kind: pb.CheckpointType.ValueType, lines: list[str], truncated: bool
    ) -> None:
        """Record a checkpoint of the step (numbered by the execution)."""
        ...


def log_channel(step_id: str, stream: str, attempt: int = 1) -> str:
    """Return the log channel of one stream of a command step's attempt.

    Args:
        step_id: The step.
        stream: ``stdout``, ``stderr`` or ``lifecycle``.
        attempt: The attempt (from 1).

    Returns:
        ``step:<step_id>:<stream>``, with ``@<attempt>`` appended after attempt 1.
    """
    channel = f"step:{step_id}:{stream}"
    return channel if attempt <= 1 else f"{channel}@{attempt}"


class _LogPump:
    """Batches the lines of one attempt's channels and keeps the combined tail."""

    def __init__(self, host: CommandHost, tail_lines: int) -> None:
        self._host = host
        self._channels = {
            s: log_channel(host.step_id, s, host.attempt) for s in ("lifecycle", "stdout", "stderr")
        }
        self._pending: list[tuple[str, str]] = []
        self._pending_bytes = 0
        self._offsets = dict.fromkeys(self._channels, 0)
        self.counts = dict.fromkeys(self._channels, 0)
        # The reference sorts the three logs by their shared seq; lines get their
        # place here in the order they were read, which is that order.
        self._tail: deque[str] = deque(maxlen=max(1, tail_lines))
        self._total = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, stream: str, line: str) -> bool:
        """Queue a line; return whether the batch is full (the caller should commit)."""
        self._pending.append((stream, line))
        self._pending_bytes += len(line)
        self.counts[stream] += 1
        self._tail.append(f"[{stream}] {line}")
        self._total += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.post)
        return len(self._pending) >= MAX_BATCH_LINES or self._pending_bytes >= MAX_BATCH_BYTES

    def post(self) -> None:
        """Send what is queued without waiting."""
        self._host.post(self._take())

    async def commit(self) -> None:
        """Send what is queued and wait for its commit."""
        events = self._take()
        if events:
            await self._host.commit(events)

    def tail(self, limit: int) -> tuple[list[str], bool]:
        """The last ``limit`` combined lines and whether older ones existed."""
        lines = list(self._tail)[-limit:] if limit > 0 else []
        return lines, self._total > len(lines)

    def _take(self) -> list[pb.LedgerEvent]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return []
        # One event per run of consecutive lines of one stream, so the seqs the
        # ledger assigns follow the order the lines were read in (the order of the
        # log-tail checkpoint), not stdout first and stderr after.
        runs: list[tuple[str, list[str]]] = []
        for stream, line in self._pending:
            if runs and runs[-1][0] == stream:
                runs[-1][1].append(line)
            else:
                runs.append((stream, [line]))
        self._pending = []
        self._pending_bytes = 0
        now = self._host.now_ns()
        events: list[pb.LedgerEvent] = []
        for stream, lines in runs:
            events += build_log_events(
                self._host.run_id,
                without_nul(lines),
                event_time_nanos=now,
                channel=self._channels[stream],
                channel_offset=self._offsets[stream],
            )
            # Positional batches keep every line (a blank one becomes a placeholder).
            self._offsets[stream] += len(lines)
        return events


async def run_command(spec: CommandSpec, host: CommandHost) -> CommandResult:
    """Run one attempt of a command step and return its result envelope.

    Args:
        spec: The command.
        host: The running execution.

    Returns:
        The result; outcome ``completed``, ``blocked``, or ``failed`` when
        ``spec.check`` is false.

    Raises:
        CommandFailedError: The command failed and ``spec.check`` is true.
        OSError: The command could not be started (e.g. ``FileNotFoundError``).
        asyncio.CancelledError: The step timed out or the task was abandoned; the
            command's process group was killed.
    """
    began = time.monotonic()
    pump = _LogPump(host, spec.log_tail_lines)
    checkpoints = 0

    def lifecycle(level: str, kind: str, message: str) -> None:
        pump.add("lifecycle", f"[{level}] {kind}: {message}")
        pump.post()

    def tail_checkpoint(after: str) -> None:
        nonlocal checkpoints
        if not spec.checkpoints:
            return
        pump.post()
        lines, truncated = pump.tail(spec.log_tail_lines)
        host.checkpoint(
            f"Captured combined log tail after {after} for {host.step_id}.",
            pb.CHECKPOINT_TYPE_LOG_TAIL,
            lines,
            truncated,
        )
        checkpoints += 1

    rendered = shlex.join(spec.argv)
    lifecycle(
        "info",
        "run_prepared",
        f"prepared command step {host.step_id} (attempt {host.attempt}): {rendered}",
    )
    if spec.checkpoints:
        host.checkpoint(
            spec.summary or f"Prepared command step {host.step_id}: {rendered}",
            pb.CHECKPOINT_TYPE_SUMMARY,
            [],
            False,
        )
        checkpoints += 1

    workdir = tempfile.mkdtemp(prefix="ledgerflow-step-")
    result_file = os.path.join(workdir, "result.json")
    env = {
        **os.environ,
        **(spec.env or {}),
        RESULT_FILE_ENV: result_file,
        "LEDGERFLOW_RUN_ID": host.run_id,
        "LEDGERFLOW_STEP_ID": host.step_id,
        "LEDGERFLOW_ATTEMPT": str(host.attempt),
    }
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=spec.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group, so a timeout can kill what it started too.
                start_new_session=True,
            )
        except OSError as exc:
            lifecycle("error", "step_failed", f"could not start the command: {exc}")
            tail_checkpoint("failed")
            raise
        lifecycle("info", "worker_started", f"started pid {proc.pid}")
        try:
            await _supervise(proc, pump)
        except BaseException as exc:
            await _terminate(proc)
            why = (
                f"the step's timeout of {spec.timeout:g}s expired"
                if isinstance(exc, asyncio.CancelledError) and spec.timeout is not None
                else f"the attempt was interrupted ({type(exc).__name__})"
            )
            lifecycle("error", "worker_exited", f"killed the process group: {why}")
            tail_checkpoint("timeout" if spec.timeout is not None else "interruption")
            raise
        finally:
            if proc.returncode is None:
                _killpg(proc.pid, signal.SIGKILL)  # Never leave it running behind us.
        pump.post()
        code = proc.returncode
        assert code is not None
        envelope, envelope_error = _read_envelope(result_file)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    outcome, needs_human, summary = _decide(spec, code, envelope, envelope_error)
    level = {"completed": "info", "failed": "error", "blocked": "warn"}[outcome]
    lifecycle(
        "info" if code == 0 else "error",
        "worker_exited",
        f"exited with code {code} (outcome {outcome})",
    )
    lifecycle(level, f"step_{outcome}", summary)
    tail_checkpoint(outcome)
    result = CommandResult(
        outcome=outcome,
        exit_code=code,
        summary=summary,
        needs_human=needs_human,
        attempt=host.attempt,
        artifacts=(*_envelope_artifacts(envelope), *_declared_artifacts(spec)),
        suggested_followups=tuple(str(s) for s in envelope.get("suggested_followups", ()) or ()),
        metrics=CommandMetrics(
            duration_ms=round((time.monotonic() - began) * 1000),
            lifecycle_event_count=pump.counts["lifecycle"],
            stdout_line_count=pump.counts["stdout"],
            stderr_line_count=pump.counts["stderr"],
            checkpoint_count=checkpoints,
        ),
    )
    if outcome == "failed" and spec.check:
        raise CommandFailedError(result)
    return result


async def _supervise(proc: asyncio.subprocess.Process, pump: _LogPump) -> None:
    assert proc.stdout is not None
    assert proc.stderr is not None
    readers = [
        asyncio.ensure_future(_read(proc.stdout, "stdout", pump)),
        asyncio.ensure_future(_read(proc.stderr, "stderr", pump)),
    ]
    waiter = asyncio.ensure_future(proc.wait())
    try:
        pending: set[asyncio.Future[Any]] = {waiter, *readers}
        while not waiter.done():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # A reader's refused commit stops the attempt.
        open_readers = [r for r in readers if not r.done()]
        if open_readers:
            # The command exited but something it started still holds its pipes:
            # the step owns its process group, so end the rest of it.
            _killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait(open_readers, timeout=_PIPE_GRACE)
        for reader in readers:
            if reader.done():
                reader.result()
    finally:
        for task in (*readers, waiter):
            task.cancel()


async def _read(stream: asyncio.StreamReader, name: str, pump: _LogPump) -> None:
    buffer = b""
    while chunk := await stream.read(_READ_CHUNK):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        while len(buffer) > _MAX_LINE_BYTES:
            lines.append(buffer[:_MAX_LINE_BYTES])
            buffer = buffer[_MAX_LINE_BYTES:]
        for raw in lines:
            if pump.add(name, _decode(raw)):
                await pump.commit()
    if buffer:
        pump.add(name, _decode(buffer))


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        _killpg(proc.pid, signal.SIGKILL)  # The leader is gone; end what it left.
        return
    _killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _KILL_GRACE)
    # SIGKILL the group even after a clean exit of the leader: its children may
    # have ignored SIGTERM.
    _killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _KILL_GRACE)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _read_envelope(path: str) -> tuple[dict[str, Any], str]:
    """Read the result file: (envelope, problem); an absent file is an empty envelope."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return {}, f"the result file could not be read: {exc}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return {}, f"the result file is not JSON: {exc}"
    if not isinstance(data, dict):
        return {}, "the result file does not hold a JSON object"
    return data, ""


def _decide(
    spec: CommandSpec, code: int, envelope: Mapping[str, Any], envelope_error: str
) -> tuple[CommandOutcome, bool, str]:
    # As the reference: blocked = envelope.blocked ?? outcome == "blocked". An exit
    # code configured as "blocked" says the same without a file. The envelope cannot
    # turn a non-zero exit into a success.
    said = envelope.get("outcome")
    outcome: CommandOutcome
    if code in spec.blocked_exit_codes or envelope.get("blocked") is True or said == "blocked":
        outcome = "blocked"
    elif code != 0 or said == "failed" or envelope_error:
        outcome = "failed"
    else:
        outcome = "completed"
    needs_human = envelope.get("needs_human")
    if not isinstance(needs_human, bool):
        # STEP_OUTCOME_BLOCKED: the step cannot go on without a person.
        needs_human = outcome == "blocked"
    summary = envelope.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        summary = {
            "completed": f"the command exited with code {code}",
            "failed": f"the command failed with exit code {code}",
            "blocked": f"the command is blocked and needs a person (exit code {code})",
        }[outcome]
    if envelope_error:
        summary = f"{summary}; {envelope_error}"
    return outcome, needs_human, summary


def _envelope_artifacts(envelope: Mapping[str, Any]) -> list[CommandArtifact]:
    out: list[CommandArtifact] = []
    for item in envelope.get("artifacts", ()) or ():
        if not isinstance(item, dict):
            continue
        uri = str(item.get("uri") or item.get("path") or "")
        name = str(item.get("name") or uri.rsplit("/", 1)[-1])
        out.append(
            CommandArtifact(
                name=name,
                kind=str(item.get("kind") or "file"),
                uri=uri,
                description=str(item.get("description") or ""),
            )
        )
    return out


def _declared_artifacts(spec: CommandSpec) -> list[CommandArtifact]:
    out: list[CommandArtifact] = []
    for declared in spec.artifacts:
        path = os.path.abspath(os.path.join(spec.cwd or os.getcwd(), declared))
        if os.path.isdir(path):
            kind = "directory"
        elif os.path.exists(path):
            kind = "file"
        else:
            continue  # Declared but not produced: nothing to point at.
        out.append(CommandArtifact(name=os.path.basename(path), kind=kind, uri=path))
    return out


def command_spec(
    argv: Sequence[StrPath],
    *,
    cwd: StrPath | None,
    env: Mapping[str, str] | None,
    timeout: float | None,
    check: bool,
    blocked_exit_codes: Sequence[int] | frozenset[int],
    artifacts: Sequence[StrPath],
    log_tail_lines: int,
    checkpoints: bool,
    summary: str | None,
) -> CommandSpec:
    """Check ``ctx.run_command``'s arguments and freeze them.

    Raises:
        TypeError: ``argv`` is a string (not a sequence of arguments) or empty.
        ValueError: ``log_tail_lines`` is negative.
    """
    if isinstance(argv, str | bytes) or not argv:
        raise TypeError("argv must be a non-empty sequence of arguments (no shell is involved)")
    if log_tail_lines < 0:
        raise ValueError("log_tail_lines must not be negative")
    return CommandSpec(
        argv=tuple(os.fspath(a) for a in argv),
        cwd=os.fspath(cwd) if cwd is not None else None,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        check=check,
        blocked_exit_codes=frozenset(blocked_exit_codes),
        artifacts=tuple(os.fspath(a) for a in artifacts),
        log_tail_lines=log_tail_lines or DEFAULT_LOG_TAIL_LINES,
        checkpoints=checkpoints,
        summary=summary,
    )


def default_step_name(argv: Sequence[StrPath]) -> str:
    """The step name of a command without ``name=``: its program's file name."""
    first = os.fspath(argv[0]) if argv and not isinstance(argv, str | bytes) else ""
    return os.path.basename(first).replace("#", "_") or "command"

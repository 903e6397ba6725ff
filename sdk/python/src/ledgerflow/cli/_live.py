"""How ``run watch`` and ``run start --watch`` show a run while it runs.

Two views of the same snapshot stream:

- :class:`LiveView` (stdout is a terminal): one screen redrawn in place with rich —
  the run's status, a table of steps (state, attempt, duration, progress bar), open
  waitpoints, the compensation report and the log tail.
- :class:`LineView` (stdout is a pipe or a file): one line per change between two
  snapshots, so CI logs and tests read a run's story top to bottom. Lines are
  ``<UTC time>  <subject>  <what>``; the subjects are ``run``, ``step <id>``,
  ``compensate <id>``, ``wait <kind> <name>`` and ``log``.

Both end with :func:`outcome_line` — ``result  <JSON>`` for a completed run, else
``<status>  <error>`` — and the command's exit status comes from
:func:`outcome_status`. rich is imported only when a live view is drawn: every other
command (and the worker) starts without it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp

from ledgerflow.ledger import is_terminal, payload_value
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

EXIT_COMPLETED = 0
"""Exit status of a command that followed a run to completion."""
EXIT_RUN_DID_NOT_COMPLETE = 1
"""Exit status when the followed run failed, was cancelled, timed out or was terminated."""

LOG_TAIL_LINES = 12
"""Lines of the log tail the live view shows."""

_STATUS_STYLE = {
    pb.RUN_STATUS_QUEUED: "dim",
    pb.RUN_STATUS_RUNNING: "bold cyan",
    pb.RUN_STATUS_WAITING: "bold yellow",
    pb.RUN_STATUS_COMPLETED: "bold green",
    pb.RUN_STATUS_FAILED: "bold red",
    pb.RUN_STATUS_CANCELLED: "bold magenta",
    pb.RUN_STATUS_TIMED_OUT: "bold red",
    pb.RUN_STATUS_TERMINATED: "bold red",
}
_STEP_STYLE = {
    pb.STEP_STATUS_RUNNING: "cyan",
    pb.STEP_STATUS_COMPLETED: "green",
    pb.STEP_STATUS_FAILED: "red",
    pb.STEP_STATUS_SKIPPED: "dim",
    pb.STEP_STATUS_SCHEDULED: "dim",
    pb.STEP_STATUS_RETRYING: "yellow",
}
_COMPENSATION_STYLE = {
    pb.COMPENSATION_STATUS_RUNNING: "cyan",
    pb.COMPENSATION_STATUS_COMPLETED: "green",
    pb.COMPENSATION_STATUS_FAILED: "red",
}


# --- words for enum values, times, payloads (shared with the other run commands) ---------


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """``RUN_STATUS_TIMED_OUT`` -> ``timed_out``; a value newer than this CLI -> its number."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def run_status(status: int) -> str:
    """The lower-case name of a run status."""
    return enum_name(pb.RunStatus, status, "RUN_STATUS_")


def step_status(status: int) -> str:
    """The lower-case name of a step status."""
    return enum_name(pb.StepStatus, status, "STEP_STATUS_")


def compensation_status(status: int) -> str:
    """The lower-case name of a compensation status."""
    return enum_name(pb.CompensationStatus, status, "COMPENSATION_STATUS_")


def format_namespace(namespace: str) -> str:
    """A run's namespace as people see it: empty for ``default``, where most runs live."""
    # A run created before namespaces existed names none: it lives in "default".
    return "" if namespace in ("", "default") else namespace


def format_time(stamp: Timestamp, *, millis: bool = False) -> str:
    """A timestamp in UTC, ``2026-01-02 03:04:05Z``; ``-`` when unset."""
    if not stamp.seconds and not stamp.nanos:
        return "-"
    value = stamp.ToDatetime(tzinfo=UTC)
    if millis:
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def format_payload(payload: common_pb2.Payload, limit: int = 200) -> str:
    """A payload as compact JSON, cut at ``limit`` characters."""
    try:
        text = json.dumps(payload_value(payload), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return f"<{len(payload.data)} bytes, {payload.encoding or 'no encoding'}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_error(error: common_pb2.ErrorInfo) -> str:
    """``Type: message`` (or the message alone when the type is unknown)."""
    return f"{error.type}: {error.message}" if error.type else error.message


def _set(stamp: Timestamp) -> bool:
    return bool(stamp.seconds or stamp.nanos)


def _seconds(start: Timestamp, end: Timestamp | None) -> float | None:
    """Seconds from ``start`` to ``end`` (None: to now); None when ``start`` is unset."""
    if not _set(start):
        return None
    if end is not None and _set(end):
        return (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9
    return (datetime.now(UTC) - start.ToDatetime(tzinfo=UTC)).total_seconds()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{max(seconds, 0.0):.2f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _step_seconds(step: pb.StepSnapshot, *, live: bool) -> float | None:
    finished = step.status in (
        pb.STEP_STATUS_COMPLETED,
        pb.STEP_STATUS_FAILED,
        pb.STEP_STATUS_SKIPPED,
    )
    if finished:
        return (
            _seconds(step.start_time, step.completion_time) if _set(step.completion_time) else None
        )
    return _seconds(step.start_time, None) if live else None


def _waitpoint(wp: pb.WaitpointSnapshot) -> str:
    text = f"{enum_name(pb.WaitpointKind, wp.kind, 'WAITPOINT_KIND_')} {wp.name or wp.waitpoint_id}"
    if _set(wp.deadline_time):
        text += f" until {format_time(wp.deadline_time)}"
    return text


def _compensation_outcome(snap: pb.RunSnapshot) -> str:
    return enum_name(pb.CompensationOutcome, snap.compensation, "COMPENSATION_OUTCOME_")


# --- the outcome -------------------------------------------------------------------------


def outcome_status(snap: pb.RunSnapshot) -> int:
    """The exit status for a followed run: 0 when it completed, else 1."""
    if snap.status == pb.RUN_STATUS_COMPLETED:
        return EXIT_COMPLETED
    return EXIT_RUN_DID_NOT_COMPLETE


def outcome_line(snap: pb.RunSnapshot) -> str:
    """The last line a watch prints: ``result  <JSON>``, or ``<status>  <error>``."""
    if snap.status == pb.RUN_STATUS_COMPLETED:
        return "result  " + (format_payload(snap.result) if snap.HasField("result") else "null")
    line = run_status(snap.status)
    if snap.HasField("error"):
        line += f"  {format_error(snap.error)}"
    if snap.compensation != pb.COMPENSATION_OUTCOME_UNSPECIFIED:
        line += f"  ({_compensation_outcome(snap)})"
    return line


# --- line view ----------------------------------------------------------------------------


class LineView:
    """Prints one line per change between consecutive snapshots of a run.

    Args:
        out: Where lines go (flushed after every snapshot, so a pipe sees them at once).
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._last: pb.RunSnapshot | None = None

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def show(self, snap: pb.RunSnapshot) -> None:
        """Print what changed since the previous snapshot (everything, for the first)."""
        for line in changes(self._last, snap):
            self._out.write(line + "\n")
        self._out.flush()
        self._last = snap

    def finish(self, snap: pb.RunSnapshot) -> None:
        """Print the outcome line of a run that ended."""
        self._out.write(outcome_line(snap) + "\n")
        self._out.flush()


def changes(previous: pb.RunSnapshot | None, snap: pb.RunSnapshot) -> list[str]:
    """The lines that tell what changed from ``previous`` (None: nothing seen yet) to ``snap``.

    Args:
        previous: The snapshot shown last, or None.
        snap: The new snapshot.

    Returns:
        Lines without newlines, in reading order: the run's status (last when it
        became terminal), steps, waitpoints, compensations, new log lines.
    """
    at = format_time(snap.update_time)
    run_line: list[str] = []
    if previous is None or previous.status != snap.status:
        line = f"{at}  run  {run_status(snap.status)}"
        if is_terminal(snap.status) and snap.HasField("error"):
            line += f"  {format_error(snap.error)}"
        run_line.append(line)
    lines: list[str] = [] if is_terminal(snap.status) else run_line

    for step_id in snap.ordered_step_ids:
        step = snap.steps[step_id]
        old = previous.steps.get(step_id) if previous is not None else None
        if old is None or (old.status, old.attempt) != (step.status, step.attempt):
            detail = [step_status(step.status)]
            if step.attempt > 1:
                detail.append(f"attempt {step.attempt}")
            seconds = _step_seconds(step, live=False)
            if seconds is not None:
                detail.append(_duration(seconds))
            if step.HasField("error") and step.status in (
                pb.STEP_STATUS_FAILED,
                pb.STEP_STATUS_RETRYING,
            ):
                detail.append(format_error(step.error))
            lines.append(f"{at}  step {step_id}  " + "  ".join(detail))
        elif old.progress != step.progress and step.progress.HasField("total"):
            progress = step.progress
            text = f"{at}  step {step_id}  progress {progress.completed}/{progress.total}"
            if progress.HasField("message"):
                text += f"  {progress.message}"
            lines.append(text)

    was_open = {wp.waitpoint_id for wp in previous.open_waitpoints} if previous else set()
    now_open = {wp.waitpoint_id for wp in snap.open_waitpoints}
    lines.extend(
        f"{at}  wait {_waitpoint(wp)}"
        for wp in snap.open_waitpoints
        if wp.waitpoint_id not in was_open
    )
    if previous is not None:
        lines.extend(
            f"{at}  resolved {_waitpoint(wp)}"
            for wp in previous.open_waitpoints
            if wp.waitpoint_id not in now_open
        )

    before = {c.step_id: c.status for c in previous.compensations} if previous else {}
    lines.extend(
        f"{at}  compensate {c.step_id}  {compensation_status(c.status)}"
        + (f"  {format_error(c.error)}" if c.HasField("error") else "")
        for c in snap.compensations
        if before.get(c.step_id) != c.status
    )

    seen = previous.total_log_count if previous is not None else 0
    new = snap.total_log_count - seen
    if new > 0:
        shown = list(snap.log_tail)[-new:] if new <= len(snap.log_tail) else list(snap.log_tail)
        if new > len(shown):
            lines.append(f"{at}  log  ({new - len(shown)} lines not shown: `ledgerflow run logs`)")
        lines.extend(f"{at}  log  {text}" for text in shown)

    if is_terminal(snap.status):
        lines.extend(run_line)
    return lines


# --- live view ----------------------------------------------------------------------------


class LiveView:
    """Redraws one screen per snapshot with rich, until :meth:`finish`.

    Use as a context manager: the screen is drawn on ``__enter__`` and left in place,
    in its last state, on ``__exit__``.

    Args:
        console: The rich console; one on stdout when None.
        log_lines: Lines of the log tail to show.
    """

    def __init__(self, console: Console | None = None, *, log_lines: int = LOG_TAIL_LINES) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = console if console is not None else Console()
        self._log_lines = log_lines
        self._snap: pb.RunSnapshot | None = None
        # Redrawn four times a second so running steps' durations tick between snapshots.
        self._live: Live = Live(
            _Lazy(self._render),
            console=self._console,
            refresh_per_second=4,
            transient=False,
        )

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def show(self, snap: pb.RunSnapshot) -> None:
        """Draw ``snap``."""
        self._snap = snap
        self._live.refresh()

    def finish(self, snap: pb.RunSnapshot) -> None:
        """Draw the final snapshot, stop redrawing, and print the outcome line under it."""
        self.show(snap)
        self._live.stop()
        style = _STATUS_STYLE.get(snap.status, "")
        self._console.print(outcome_line(snap), style=style, highlight=False, markup=False)

    def _render(self) -> RenderableType:
        from rich.text import Text

        if self._snap is None:
            return Text("waiting for the coordinator...", style="dim")
        return render_snapshot(self._snap, log_lines=self._log_lines)


class _Lazy:
    """A renderable that asks for its content at each redraw."""

    def __init__(self, render: Callable[[], RenderableType]) -> None:
        self._render = render

    def __rich__(self) -> RenderableType:
        return self._render()


def render_snapshot(snap: pb.RunSnapshot, *, log_lines: int = LOG_TAIL_LINES) -> RenderableType:
    """The live view of one snapshot, as a rich renderable.

    Args:
        snap: The run's snapshot.
        log_lines: Lines of the log tail to show.

    Returns:
        A panel: header, steps table, waitpoints, compensations, log tail.
    """
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    live = not is_terminal(snap.status)
    header = Text()
    header.append(run_status(snap.status), style=_STATUS_STYLE.get(snap.status, ""))
    run_seconds = (
        snap.duration.ToTimedelta().total_seconds()
        if snap.HasField("duration")
        else _seconds(snap.start_time, None if live else snap.finish_time)
    )
    header.append(f"   {_duration(run_seconds)}", style="bold")
    header.append(f"   seq {snap.last_seq}", style="dim")
    if snap.cancel_requested and snap.status != pb.RUN_STATUS_CANCELLED:
        reason = snap.cancel_reason or "(no reason)"
        header.append(f"   cancel requested: {reason}", style="magenta")
    parts: list[RenderableType] = [header]

    if snap.ordered_step_ids:
        steps = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for column in ("step", "state", "attempt", "duration", "progress"):
            steps.add_column(column, no_wrap=column != "progress")
        for step_id in snap.ordered_step_ids:
            step = snap.steps[step_id]
            progress: RenderableType = ""
            failing = step.status in (pb.STEP_STATUS_FAILED, pb.STEP_STATUS_RETRYING)
            if failing and step.HasField("error"):
                # Why it failed matters more than how far it got.
                progress = Text(format_error(step.error), style="red")
            elif step.progress.HasField("total") and step.progress.total > 0:
                bar = ProgressBar(
                    total=step.progress.total, completed=step.progress.completed, width=20
                )
                label = f" {step.progress.completed}/{step.progress.total}"
                if step.progress.HasField("message"):
                    label += f" {step.progress.message}"
                progress = Table.grid(padding=0)
                progress.add_row(bar, Text(label))
            steps.add_row(
                step_id,
                Text(step_status(step.status), style=_STEP_STYLE.get(step.status, "")),
                str(step.attempt or 1),
                _duration(_step_seconds(step, live=live)),
                progress,
            )
        parts.append(steps)

    if snap.open_waitpoints:
        waits = Text("waiting on  ", style="bold yellow")
        waits.append(", ".join(_waitpoint(wp) for wp in snap.open_waitpoints))
        parts.append(waits)

    if snap.compensations:
        comp = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        comp.add_column("compensation")
        comp.add_column("state")
        comp.add_column("")
        for c in snap.compensations:
            comp.add_row(
                c.step_id,
                Text(compensation_status(c.status), style=_COMPENSATION_STYLE.get(c.status, "")),
                Text(format_error(c.error), style="red") if c.HasField("error") else "",
            )
        parts.append(comp)
        if snap.compensation != pb.COMPENSATION_OUTCOME_UNSPECIFIED:
            parts.append(Text(f"compensation: {_compensation_outcome(snap)}", style="bold"))

    if log_lines and snap.log_tail:
        tail = list(snap.log_tail)[-log_lines:]
        parts.append(Text(f"log (last {len(tail)} of {snap.total_log_count} lines)", style="bold"))
        parts.extend(Text(line, overflow="ellipsis", no_wrap=True) for line in tail)

    title = f"run {snap.run_id}"
    if snap.HasField("workflow_name"):
        title += f" · {snap.workflow_name}"
    if format_namespace(snap.namespace):
        title += f" · namespace {snap.namespace}"
    return Panel(Group(*parts), title=title, title_align="left", expand=True)


def make_view() -> LiveView | LineView:
    """The view for stdout: live when stdout is a terminal, lines otherwise."""
    return LiveView() if sys.stdout.isatty() else LineView()

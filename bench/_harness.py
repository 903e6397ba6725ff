"""What the process-level benchmarks share: starting the coordinator, quantiles, /proc.

``bench/workflows.py``, ``bench/timers.py`` and ``bench/load.py`` each start a private
PostgreSQL cluster (``tests/pg_cluster.py``), a ``ledgerflow server`` on it and workers;
the pieces they have in common live here. Import it as ``bench._harness`` after putting
the repository root on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent

# The venv's console scripts sit next to its python.
BIN = Path(sys.executable).parent / "ledgerflow"


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(
    cmd: list[str], cwd: str | None = None, stderr: IO[Any] | int | None = None
) -> subprocess.Popen[str]:
    """Start a process with unbuffered output, its stdout piped to us."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def start_server(
    database_url: str, *extra: str, stderr: IO[Any] | int | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``ledgerflow server`` on a free loopback port.

    Args:
        database_url: The database it serves.
        *extra: More ``ledgerflow server`` flags.
        stderr: Where its log goes; None inherits ours.

    Returns:
        The process and the ``host:port`` it listens on.
    """
    server = start(
        [str(BIN), "server", "--listen", "127.0.0.1:0", "--database-url", database_url, *extra],
        stderr=stderr,
    )
    assert server.stdout is not None
    match = re.search(r"listening on (\S+)", server.stdout.readline())
    assert match, "server did not start"
    return server, match.group(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """The resident set size of a process now (``VmRSS`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise ValueError(f"no VmRSS for pid {pid}")


def machine() -> str:
    """One line naming the interpreter and the CPUs, printed first by every benchmark."""
    return f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus"

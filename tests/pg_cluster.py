"""A private PostgreSQL cluster for the test session (the ``pg_cluster`` fixture).

One ``initdb`` per session in a temporary directory, on a free loopback port, stopped and
removed at the end: hermetic, and fault tests may stop and restart it. ``initdb`` and
``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PgClusterError(Exception):
    """The cluster could not be found, created, started or stopped."""


def find_bindir() -> Path:
    """Return the directory holding ``initdb`` and ``pg_ctl``.

    Looks where scripts/test.sh looks: ``$LEDGERFLOW_PG_BINDIR``, ``pg_config --bindir``,
    then the newest ``/usr/lib/postgresql/*/bin``.

    Raises:
        PgClusterError: No candidate has both binaries.
    """
    candidates: list[str] = []
    if env := os.environ.get("LEDGERFLOW_PG_BINDIR"):
        candidates.append(env)
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        bindir = Path(candidate)
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "psql")):
            return bindir
    raise PgClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl, psql) not found: set LEDGERFLOW_PG_BINDIR "
        "or install them (`apt-get install postgresql`; scripts/test.sh does this itself). "
        f"Looked in: {', '.join(candidates) or 'nothing'}"
    )


def _scratch_parent() -> str | None:
    # Memory-backed when the machine has it: CREATE DATABASE (which copies and fsyncs the
    # template) takes ~50 ms there against 100-500 ms on a busy disk. The server still runs
    # with fsync=on; what a test can do to it (stop, kill, restart) loses nothing that fsync
    # would have saved, since the OS keeps running.
    shm = "/dev/shm"
    try:
        stats = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and stats.f_bavail * stats.f_frsize >= 1 << 30:
        return shm
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster:
    """A private cluster in a new temporary directory: :meth:`init` creates and starts it,
    :meth:`destroy` stops and removes it. Superuser ``postgres``, trust authentication,
    TCP on 127.0.0.1 only.

    Args:
        bindir: Where ``initdb``, ``pg_ctl`` and ``psql`` are (see :func:`find_bindir`).
        parent: The directory to create the cluster in; default memory-backed when possible
            (benchmarks pass a disk directory so that fsync costs what it costs).
    """

    def __init__(self, bindir: Path, parent: str | None = None) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="ledgerflow-pg-", dir=parent or _scratch_parent()))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_file = self.base / "postgres.log"
        self.port = 0
        self.running = False
        self.init_seconds = 0.0
        self.start_seconds = 0.0
        self._as_postgres: list[str] = []
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.base, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # cwd: the postgres user may not be allowed into the caller's working directory.
        proc = subprocess.run(
            [*self._as_postgres, *args], capture_output=True, text=True, cwd=self.base
        )
        if check and proc.returncode != 0:
            raise PgClusterError(
                f"{Path(args[0]).name} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                + self._log_tail()
            )
        return proc

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(lines[-20:])

    def init(self) -> None:
        """Create the cluster (``initdb``) and start it on a free port."""
        began = time.perf_counter()
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            # The cluster lives for one session; the server itself runs with fsync=on.
            "--no-sync",
            "--no-instructions",
        )
        self.init_seconds = time.perf_counter() - began
        # Another process can take the free port before the server binds it: try anew.
        for attempt in range(3):
            self.port = _free_port()
            try:
                self.start()
            except PgClusterError:
                if attempt == 2:
                    raise
            else:
                return

    def start(self) -> None:
        """Start the server on :attr:`port` and wait until it accepts connections."""
        began = time.perf_counter()
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "-w",
            "start",
        )
        self.running = True
        self.start_seconds = time.perf_counter() - began

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are disconnected)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        self.running = False

    def restart(self) -> None:
        """Stop and start the server again on the same port."""
        self.stop()
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        """Return the SQLAlchemy URL (asyncpg) of a database in this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL.

        Args:
            name: Lowercase letters, digits and underscores, at most 63 characters.
        """
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        # psql over TCP rather than a driver: callers may be inside a running event loop.
        self._psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _psql(self, sql: str) -> None:
        proc = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise PgClusterError(f"psql {sql!r} exited {proc.returncode}: {proc.stderr.strip()}")

    def destroy(self) -> None:
        """Stop the server if it runs and remove the cluster's directory."""
        try:
            status = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "status", check=False
            )
            if status.returncode == 0:
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

"""``ledgerflow db upgrade``: as a real subprocess where it matters, in-process otherwise.

Each subprocess pays ~1 s of imports (SQLAlchemy, the store), so the variations of input
run through ``main()`` in this process; exit statuses and output are the same.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerflow.cli import main
from tests.pg_cluster import PgCluster

BIN = Path(sys.executable).parent / "ledgerflow"


def db_upgrade(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "LEDGERFLOW_DATABASE_URL"}
    return subprocess.run(
        [str(BIN), "db", "upgrade", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )


@pytest.fixture(autouse=True)
def _no_url_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGERFLOW_DATABASE_URL", raising=False)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["db", "upgrade", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_sqlite_file_is_migrated_then_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lf.db"
    proc = db_upgrade("--database-url", f"sqlite:///{path}")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"database at sqlite+aiosqlite:///{path} is at revision 0005\n"
    assert run_main(capsys, "--database-url", f"sqlite:///{path}") == (0, proc.stdout, "")


def test_postgres_is_migrated_and_the_password_is_not_shown(
    pg_cluster: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_cluster.create_database("cli_upgrade")
    # Trust authentication ignores the password; it is there to be hidden.
    url = f"postgresql://postgres:hunter2@127.0.0.1:{pg_cluster.port}/cli_upgrade"
    proc = db_upgrade("--database-url", url)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == (
        f"database at postgresql+asyncpg://postgres:***@127.0.0.1:{pg_cluster.port}/cli_upgrade"
        " is at revision 0005\n"
    )
    assert run_main(capsys, "--database-url", url) == (0, proc.stdout, "")


def test_unsupported_url_is_one_line_and_exit_2() -> None:
    proc = db_upgrade("--database-url", "mysql://u:hunter2@db/lf")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "ledgerflow: unsupported database URL scheme 'mysql': use postgresql+asyncpg:// "
        "(or postgresql://) or sqlite+aiosqlite:/// (or sqlite:///)\n"
    )


def test_default_is_ledgerflow_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys) == (
        0,
        "database at sqlite+aiosqlite:///ledgerflow.db is at revision 0005\n",
        "",
    )
    assert (tmp_path / "ledgerflow.db").is_file()


def test_url_comes_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert run_main(capsys)[0] == 0
    assert (tmp_path / "env.db").is_file()
    assert not (tmp_path / "ledgerflow.db").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("hunter2", "ledgerflow: not a database URL"),
        ("sqlite://", "ledgerflow: an SQLite database URL needs a file path"),
        (
            f"postgresql://u:hunter2@127.0.0.1:{_closed_port()}/lf",
            "ledgerflow: cannot upgrade the database at postgresql+asyncpg://u:***@127.0.0.1:",
        ),
        (
            "sqlite:////nonexistent-dir/lf.db",
            "ledgerflow: cannot upgrade the database at sqlite+aiosqlite:////nonexistent-dir/lf.db:"
            " unable to open database file",
        ),
    ],
    ids=["not-a-url", "sqlite-memory", "unreachable", "unopenable"],
)
def test_unusable_database_is_one_line_and_exit_2(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main(capsys, "--database-url", url)
    assert (status, out) == (2, "")
    assert err.startswith(message), err
    assert err.count("\n") == 1, err
    assert "hunter2" not in err


def test_not_a_database_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "text.db"
    path.write_text("not sqlite\n" * 100)
    status, _, err = run_main(capsys, "--database-url", f"sqlite:///{path}")
    assert status == 2
    assert err.endswith(": file is not a database\n"), err


def test_building_the_parser_imports_no_sqlalchemy() -> None:
    code = (
        "import sys\n"
        "from ledgerflow.cli._main import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic'))\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout == "[]\n"

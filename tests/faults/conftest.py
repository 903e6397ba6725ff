"""Fixtures of the fault-injection tests: a fresh Postgres database, the workers' directory."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from tests.faults.harness import APP
from tests.pg_cluster import PgCluster

_databases = itertools.count(1)


@pytest.fixture
def pg_url(pg_cluster: PgCluster, request: pytest.FixtureRequest) -> str:
    """A fresh database in the session's private Postgres cluster (started if a test stopped it)."""
    if not pg_cluster.running:
        pg_cluster.start()
    name = f"faults_{next(_databases)}_{request.node.name.lower()}"
    return pg_cluster.create_database("".join(c if c.isalnum() else "_" for c in name)[:63])


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory holding ``faults_app.py`` (imported from there by workers) and ``marks/``."""
    shutil.copy(APP, tmp_path / "faults_app.py")
    (tmp_path / "marks").mkdir()
    return tmp_path

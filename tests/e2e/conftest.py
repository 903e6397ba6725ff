"""Fixtures of the end-to-end tests: the workers' app directory and a running coordinator."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.test_workflows import APP, LEASE, free_port, server


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory holding ``e2e_app.py`` (imported from there by workers) and ``marks/``."""
    shutil.copy(APP, tmp_path / "e2e_app.py")
    (tmp_path / "marks").mkdir()
    return tmp_path


@pytest.fixture
async def cluster(db_url: str, app_dir: Path) -> AsyncIterator[tuple[str, int]]:
    """A coordinator on ``db_url``'s fresh database: (the URL, its port)."""
    port = free_port()
    with server(db_url, port, *LEASE):
        yield db_url, port

"""Shared pytest fixtures."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Its assert helpers should explain failures like test code does.
pytest.register_assert_rewrite("tests.reference_oracle")

from tests.pg_cluster import PgCluster, PgClusterError, find_bindir  # noqa: E402
from tests.reference_oracle import ReferenceOracle, unavailable_reason  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture(scope="session")
def reference_oracle() -> Iterator[ReferenceOracle]:
    """The reference oracle (one node process per session).

    Skips the requesting test when the reference sources (``../shared/reference``) or node
    are missing; set ``LEDGERFLOW_REQUIRE_REFERENCE=1`` to fail instead of skipping.
    """
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("LEDGERFLOW_REQUIRE_REFERENCE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with ReferenceOracle() as oracle:
        yield oracle


# --- Databases ------------------------------------------------------------------------------
# `db_url` runs a test on both dialects, each on a fresh database; `engine` adds a migrated
# engine. Postgres comes from one private cluster per session (`pg_cluster`), started only
# when a test asks for it.


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster for the session (see tests/pg_cluster.py).

    Fails (never skips) when the server binaries are missing: scripts/test.sh installs them.
    Tests that stop the server must leave it running (``restart()``) or ``db_url``
    starts it again for the next test.
    """
    try:
        bindir = find_bindir()
    except PgClusterError as err:
        pytest.fail(str(err))
    cluster = PgCluster(bindir)
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.destroy()


_database_count = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database: an SQLite file or a new Postgres database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ledgerflow.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    if not cluster.running:
        cluster.start()
    # Named after the test, to find it in the server log.
    slug = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())
    return cluster.create_database(f"t{next(_database_count)}_{slug}"[:63])


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``db_url``'s fresh database, migrated to head, disposed afterwards."""
    # Imported here so that tests without a database never import SQLAlchemy.
    from ledgerflow.coordinator.store import create_engine, upgrade

    eng = create_engine(db_url)
    try:
        await upgrade(eng)
        yield eng
    finally:
        await eng.dispose()

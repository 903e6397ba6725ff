"""Fixtures for the coordinator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ledgerflow.coordinator.store import Store


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[Store]:
    """A started store on a fresh, migrated database (SQLite and Postgres)."""
    s = Store(engine)
    await s.start()
    yield s
    await s.close()

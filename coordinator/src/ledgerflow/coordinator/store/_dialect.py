"""What differs between Postgres and SQLite in the statements the store builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert_for(conn: AsyncConnection) -> Callable[[Table], Any]:
    """Return the dialect's ``insert`` (both have ``on_conflict_do_nothing/update``)."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert

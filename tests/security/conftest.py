"""Fixtures for the security tests: a token file, and coordinators that require it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.api._auth import TokenTable, hash_token, new_token


@dataclass(frozen=True)
class Tokens:
    """The tokens of the test's token file, in clear (the file holds only their hashes)."""

    worker: str
    client: str
    admin: str
    file: Path

    def all(self) -> list[str]:
        """Every token in clear, for scanning logs."""
        return [self.worker, self.client, self.admin]


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    """A TOML token file with one worker, one client and one admin token."""
    worker, client, admin = new_token(), new_token(), new_token()
    entries = [("ci-worker", worker, "worker"), ("app", client, "client"), ("ops", admin, "admin")]
    text = "".join(
        f'[[tokens]]\nname = "{name}"\nsha256 = "{hash_token(tok)}"\nscopes = ["{scope}"]\n\n'
        for name, tok, scope in entries
    )
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    return Tokens(worker=worker, client=client, admin=admin, file=path)


StartCoordinator = Callable[..., Awaitable[Coordinator]]


@pytest.fixture
async def start_coordinator(tmp_path: Path) -> AsyncIterator[StartCoordinator]:
    """Start coordinators on loopback and an SQLite file; all are stopped at teardown."""
    started: list[Coordinator] = []

    async def start(**config: Any) -> Coordinator:
        config.setdefault("listen", "127.0.0.1:0")
        config.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path / 'ledgerflow.db'}")
        config.setdefault("shutdown_grace", 1)
        c = Coordinator(ServerConfig(**config))
        await c.start()
        started.append(c)
        return c

    yield start
    for c in reversed(started):
        await c.stop()


@pytest.fixture
async def secured(tokens: Tokens, start_coordinator: StartCoordinator) -> Coordinator:
    """A coordinator that requires the tokens of ``tokens``."""
    return await start_coordinator(auth_tokens=TokenTable.load(tokens.file))

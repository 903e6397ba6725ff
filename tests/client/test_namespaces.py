"""A client's namespace against a real coordinator (SQLite and Postgres).

A client with a namespace starts its runs there and lists and watches only that
namespace's runs; a client without one leaves the choice to the coordinator, which
for a coordinator without tokens means "default" for new runs and every namespace
for listings. A call may name another namespace, or none (empty).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import pytest

from ledgerflow.client import Client, SyncClient
from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.api._auth import Principal, TokenTable, hash_token
from ledgerflow.errors import InvalidArgumentError, PermissionDeniedError, RunNotFoundError

_T = TypeVar("_T")


@pytest.fixture
async def plain(address: str) -> AsyncIterator[Client]:
    async with await Client.connect(address, connect_timeout=10) as c:
        yield c


@pytest.fixture
async def in_a(address: str) -> AsyncIterator[Client]:
    async with await Client.connect(address, connect_timeout=10, namespace="a") as c:
        yield c


async def started(client: Client, run_id: str, **kwargs: Any) -> str:
    """Start a run; return the namespace the coordinator put it in."""
    return (await client.start_run("billing.close", run_id=run_id, **kwargs)).snapshot.namespace


async def listed(client: Client, **kwargs: Any) -> list[str]:
    return sorted([run.run_id for run in (await client.list_runs(**kwargs)).runs])


async def test_a_client_starts_its_runs_in_its_namespace(plain: Client, in_a: Client) -> None:
    assert await started(in_a, "r-a") == "a"
    handle = await in_a.start("billing.close", run_id="r-a2")
    assert (await handle.describe()).namespace == "a"
    assert await started(in_a, "r-b", namespace="b") == "b"  # a call may name another
    assert await started(in_a, "r-none", namespace="") == "default"  # or none
    assert await started(plain, "r-default") == "default"
    assert (await plain.get_run("r-a")).namespace == "a"
    # Ids are unique across namespaces: the run is found by id, whatever the namespace.
    assert (await in_a.get_run("r-default")).run_id == "r-default"


async def test_listings_keep_the_clients_namespace_and_a_plain_client_sees_all(
    plain: Client, in_a: Client
) -> None:
    await started(in_a, "a1")
    await started(in_a, "a2")
    await started(plain, "b1", namespace="b")
    await started(plain, "d1")
    assert await listed(in_a) == ["a1", "a2"]
    assert sorted([run.run_id async for run in in_a.iter_runs(page_size=1)]) == ["a1", "a2"]
    assert {run.namespace for run in (await in_a.list_runs()).runs} == {"a"}
    assert await listed(plain) == ["a1", "a2", "b1", "d1"]
    assert await listed(plain, namespace="b") == ["b1"]
    assert await listed(plain, namespace="default") == ["d1"]
    assert await listed(in_a, namespace="") == ["a1", "a2", "b1", "d1"]
    assert await listed(in_a, namespace="nobody") == []


async def test_watch_runs_keeps_the_clients_namespace(plain: Client, in_a: Client) -> None:
    await started(plain, "b1", namespace="b")
    await started(in_a, "a1")
    async with aclosing(in_a.watch_runs(include_existing=True)) as runs:
        first = await anext(runs)
        assert (first.run_id, first.namespace) == ("a1", "a")
        # The stream already waits for changes. A run of another namespace starts first:
        # were the stream not filtered, its summary would arrive before a2's.
        await started(plain, "b2", namespace="b")
        await started(in_a, "a2")
        second = await anext(runs)
        assert (second.run_id, second.namespace) == ("a2", "a")


async def test_a_malformed_namespace_is_refused_naming_the_field(address: str) -> None:
    async with Client(address, namespace="Not Valid") as client:
        with pytest.raises(InvalidArgumentError) as start_error:
            await client.start("billing.close")
        assert start_error.value.field == "namespace"
        with pytest.raises(InvalidArgumentError) as list_error:
            await client.list_runs()
        assert list_error.value.field == "filter.namespace"


async def test_the_namespace_is_shown_and_empty_means_none(address: str) -> None:
    async with Client(address, namespace="a") as client:
        assert client.namespace == "a"
        assert repr(client) == f"Client(address={address!r}, namespace='a')"
    async with Client(address, namespace="") as client:
        assert client.namespace is None
        assert repr(client) == f"Client(address={address!r})"


# --- SyncClient ---------------------------------------------------------------------------
# The coordinator is served by the test's event loop: blocking calls run in a thread.


async def blocking(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout=60)


async def test_a_sync_client_starts_lists_and_watches_in_its_namespace(address: str) -> None:
    # connect_timeout=None: connecting would block the loop that serves the coordinator.
    with (
        SyncClient.connect(address, connect_timeout=None, namespace="a") as in_a,
        SyncClient.connect(address, connect_timeout=None) as plain,
    ):
        assert (in_a.namespace, plain.namespace) == ("a", None)
        assert repr(in_a) == f"SyncClient(address={address!r}, namespace='a')"
        assert (await blocking(in_a.start_run, "w", run_id="a1")).snapshot.namespace == "a"
        handle = await blocking(in_a.start, "w", run_id="b1", namespace="b")
        assert (await blocking(handle.describe)).namespace == "b"
        assert (await blocking(plain.start_run, "w", run_id="d1")).snapshot.namespace == "default"

        def ids(client: SyncClient, **kwargs: Any) -> list[str]:
            return sorted(run.run_id for run in client.list_runs(**kwargs).runs)

        assert await blocking(ids, in_a) == ["a1"]
        assert await blocking(ids, plain) == ["a1", "b1", "d1"]
        assert await blocking(ids, plain, namespace="b") == ["b1"]
        assert await blocking(ids, in_a, namespace="") == ["a1", "b1", "d1"]
        every = await blocking(lambda: sorted(r.run_id for r in in_a.iter_runs(page_size=1)))
        assert every == ["a1"]

        def first_watched() -> tuple[str, str]:
            stream = in_a.watch_runs(include_existing=True)
            try:
                run = next(stream)
            finally:
                stream.close()
            return run.run_id, run.namespace

        # a1 is the only run of "a": with include_existing it is the first summary sent.
        assert await blocking(first_watched) == ("a1", "a")


# --- a token confined to a namespace ------------------------------------------------------


@pytest.fixture
async def guarded(db_url: str) -> AsyncIterator[str]:
    """A coordinator whose token ``a-token`` is confined to namespace "a"; its address."""
    tokens = TokenTable(
        {hash_token("a-token"): Principal("team-a", frozenset({"client"}), namespace="a")}
    )
    server = Coordinator(
        ServerConfig(
            listen="127.0.0.1:0", database_url=db_url, shutdown_grace=2, auth_tokens=tokens
        )
    )
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop()


async def test_a_confined_token_acts_in_its_namespace_and_is_denied_another(
    guarded: str,
) -> None:
    async with Client(guarded, token="a-token") as client:
        assert await started(client, "r1") == "a"  # no namespace named: the token's
    async with Client(guarded, token="a-token", namespace="a") as client:
        assert await listed(client) == ["r1"]
    async with Client(guarded, token="a-token", namespace="b") as client:
        with pytest.raises(PermissionDeniedError, match="team-a"):
            await client.start("billing.close")
        with pytest.raises(PermissionDeniedError):
            await client.list_runs()
        # Finding a run by id is not a namespace matter: r1 is the token's own run.
        assert (await client.get_run("r1")).namespace == "a"
        with pytest.raises(RunNotFoundError):
            await client.get_run("nowhere")

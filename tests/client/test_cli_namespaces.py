"""``ledgerflow run ... --namespace`` as a real subprocess against a real coordinator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ledgerflow.client import Client
from tests.client.test_cli_run import Result, ledgerflow


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    async with await Client.connect(address, connect_timeout=10) as c:
        yield c


async def run(address: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return await ledgerflow("run", *args, "--address", address, env=env)


async def test_start_creates_the_run_in_the_namespace_of_the_flag_or_the_environment(
    address: str, client: Client
) -> None:
    flagged = await run(address, "start", "billing.close", "--run-id", "r1", "--namespace", "eu")
    assert (flagged.code, flagged.out, flagged.err) == (0, "run r1 created in namespace eu\n", "")
    from_env = await run(
        address, "start", "billing.close", "--run-id", "r2", env={"LEDGERFLOW_NAMESPACE": "us"}
    )
    assert (from_env.code, from_env.out) == (0, "run r2 created in namespace us\n")
    # The flag wins over the environment.
    both = await run(
        address,
        "start",
        "billing.close",
        "--run-id",
        "r3",
        "--namespace",
        "eu",
        env={"LEDGERFLOW_NAMESPACE": "us"},
    )
    assert (both.code, both.out) == (0, "run r3 created in namespace eu\n")
    plain = await run(address, "start", "billing.close", "--run-id", "r4")
    assert (plain.code, plain.out) == (0, "run r4 created\n")
    again = await run(address, "start", "billing.close", "--run-id", "r1", "--namespace", "eu")
    assert (again.code, again.out) == (0, "run r1 already existed in namespace eu (queued)\n")
    # Run ids are unique across namespaces: the id is taken for a start elsewhere.
    elsewhere = await run(address, "start", "billing.close", "--run-id", "r1")
    assert elsewhere.code == 2
    assert elsewhere.err.startswith("ledgerflow: run_id: ")
    assert len(elsewhere.err.splitlines()) == 1, elsewhere.err
    namespaces = {run.run_id: run.namespace for run in (await client.list_runs()).runs}
    assert namespaces == {"r1": "eu", "r2": "us", "r3": "eu", "r4": "default"}


async def test_list_keeps_the_namespace_and_shows_it_when_not_default(
    address: str, client: Client
) -> None:
    await client.start_run("billing.close", run_id="e1", namespace="eu")
    await client.start_run("billing.close", run_id="u1", namespace="us")
    await client.start_run("billing.close", run_id="d1")

    listed = await run(address, "list", "--namespace", "eu")
    assert listed.code == 0, listed.err
    header = ["NAMESPACE", "RUN", "ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED"]
    assert listed.lines[0].split() == header
    assert [line.split()[:2] for line in listed.lines[1:]] == [["eu", "e1"]]

    from_env = await run(address, "list", "--json", env={"LEDGERFLOW_NAMESPACE": "us"})
    assert [(o["runId"], o["namespace"]) for o in from_env.objects] == [("u1", "us")]

    # Every namespace: a run of "default" leaves its cell empty.
    every = await run(address, "list")
    assert every.code == 0, every.err
    rows = {line.split()[0]: line for line in every.lines[1:]}
    assert set(rows) == {"eu", "us", "d1"}
    assert rows["eu"].split()[1] == "e1"
    assert rows["us"].split()[1] == "u1"

    # Only default runs: no namespace column at all.
    defaults = await run(address, "list", "--namespace", "default")
    assert defaults.lines[0].split()[:3] == ["RUN", "ID", "WORKFLOW"]
    assert [line.split()[0] for line in defaults.lines[1:]] == ["d1"]
    as_json = await run(address, "list", "--namespace", "default", "--json")
    assert [(o["runId"], o["namespace"]) for o in as_json.objects] == [("d1", "default")]


async def test_show_names_the_namespace_when_not_default(address: str, client: Client) -> None:
    await client.start_run("billing.close", run_id="e1", namespace="eu")
    await client.start_run("billing.close", run_id="d1")
    shown = await run(address, "show", "e1")
    assert shown.code == 0, shown.err
    assert shown.lines[:2] == ["run        e1", "namespace  eu"]
    plain = await run(address, "show", "d1")
    assert plain.lines[1].split()[0] == "workflow"
    assert not any(line.startswith("namespace") for line in plain.lines)
    (as_json,) = (await run(address, "show", "d1", "--json")).objects
    assert as_json["namespace"] == "default"


@pytest.mark.parametrize("command", ["start billing.close", "list"])
async def test_a_malformed_namespace_exits_2_with_the_coordinators_one_line(
    address: str, client: Client, command: str
) -> None:
    result = await run(address, *command.split(), "--namespace", "Not-Valid")
    assert result.code == 2
    assert len(result.err.splitlines()) == 1, result.err
    field = "namespace" if command.startswith("start") else "filter.namespace"
    assert result.err.startswith(f"ledgerflow: {field}: "), result.err
    assert (await client.list_runs()).runs == []

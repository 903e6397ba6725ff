"""@workflow.defn and the worker's Registry."""

from __future__ import annotations

import types

import pytest

from ledgerflow import workflow
from ledgerflow.errors import WorkflowNotFoundError, WorkflowUsageError


@workflow.defn
async def plain(ctx: workflow.Context, n: int) -> str:
    return str(n)


@workflow.defn(name="orders.checkout", version="2")
async def checkout_v2(ctx: workflow.Context) -> None:
    return None


@workflow.defn(name="orders.checkout", version="1")
async def checkout_v1(ctx: workflow.Context) -> None:
    return None


def test_defn_records_name_version_and_types() -> None:
    assert (plain.name, plain.version, plain.takes_input) == ("plain", "", True)
    assert (plain.input_type, plain.output_type) == (int, str)
    assert (checkout_v2.name, checkout_v2.version, checkout_v2.takes_input) == (
        "orders.checkout",
        "2",
        False,
    )


async def test_a_definition_can_be_called_directly() -> None:
    ctx: workflow.Context = None  # type: ignore[assignment]
    assert await plain(ctx, 3) == "3"
    await checkout_v1(ctx, None)


def test_defn_refuses_what_it_cannot_run() -> None:
    def not_async(ctx: workflow.Context) -> None:
        return None

    async def too_many(ctx: workflow.Context, a: int, b: int) -> None:
        return None

    with pytest.raises(WorkflowUsageError, match="async def"):
        workflow.defn(not_async)  # type: ignore[arg-type]
    with pytest.raises(WorkflowUsageError, match="3 required"):
        workflow.defn(too_many)  # type: ignore[arg-type]
    with pytest.raises(WorkflowUsageError, match="name"):
        workflow.defn(name=" ")(plain.fn)


def test_registry_by_name_and_version() -> None:
    registry = workflow.Registry([plain, checkout_v1, checkout_v2])
    assert len(registry) == 3
    assert registry.get("orders.checkout", "1") is checkout_v1
    assert registry.get("orders.checkout", "2") is checkout_v2
    assert registry.get("plain") is plain
    assert registry.get("plain", "7") is plain, "an unversioned definition serves every version"
    with pytest.raises(WorkflowNotFoundError, match=r"known: orders\.checkout, plain"):
        registry.get("nope")
    with pytest.raises(WorkflowNotFoundError):
        registry.get("orders.checkout", "3")
    with pytest.raises(WorkflowNotFoundError):
        registry.get("orders.checkout"), "two versions: an unversioned task is ambiguous"


def test_an_unversioned_task_gets_the_only_version() -> None:
    assert workflow.Registry([checkout_v2]).get("orders.checkout") is checkout_v2


def test_registry_refuses_two_definitions_under_one_key() -> None:
    registry = workflow.Registry([plain])
    registry.register(plain)
    other = workflow.defn(name="plain")(plain.fn)
    with pytest.raises(WorkflowUsageError, match="two workflows"):
        registry.register(other)


def test_registry_from_module_finds_every_definition() -> None:
    module = types.ModuleType("app")
    module.plain = plain  # type: ignore[attr-defined]
    module.checkout = checkout_v2  # type: ignore[attr-defined]
    module.helper = len  # type: ignore[attr-defined]
    assert list(workflow.Registry.from_module(module)) == [plain, checkout_v2]

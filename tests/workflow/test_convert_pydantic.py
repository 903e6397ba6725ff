"""Pydantic models in and out (pydantic is a development dependency, never a runtime one)."""

from __future__ import annotations

import pydantic

from ledgerflow import workflow
from ledgerflow.ledger import payload_value
from tests.workflow.harness import Runner


class Item(pydantic.BaseModel):
    name: str
    price: float


def cheapest(items: list[Item]) -> Item:
    return min(items, key=lambda i: i.price)


@workflow.defn(name="pydantic")
async def with_models(ctx: workflow.Context, items: list[Item]) -> Item:
    return await ctx.step("cheapest", cheapest, items)


async def test_pydantic_models_in_and_out() -> None:
    items = [{"name": "a", "price": 2}, {"name": "b", "price": 1}]
    result = await Runner(with_models, workflow_input=items).run()
    assert payload_value(result.output) == {"name": "b", "price": 1.0}

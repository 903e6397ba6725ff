"""Inputs and outputs: JSON by default, dataclasses and pydantic models by type hints."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import pytest

from ledgerflow import workflow
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.workflow._convert import decode, encode, from_jsonable, return_hint, to_jsonable
from tests.workflow.harness import Runner, outcome_name


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Line:
    sku: str
    qty: int = 1


@dataclass
class Order:
    id: str
    lines: list[Line]
    color: Color = Color.RED
    note: str | None = None
    tags: set[str] = field(default_factory=set)


@dataclass
class Receipt:
    order_id: str
    total: float
    first: Line
    at: datetime
    ref: uuid.UUID


def price(order: Order) -> Receipt:
    return Receipt(
        order_id=order.id,
        total=sum(line.qty for line in order.lines) * 2.5,
        first=order.lines[0],
        at=datetime(2024, 1, 2, tzinfo=UTC),
        ref=uuid.UUID(int=7),
    )


SEEN: list[Any] = []


@workflow.defn(name="typed")
async def typed(ctx: workflow.Context, order: Order) -> Receipt:
    SEEN.append(order)
    receipt = await ctx.step("price", price, order)
    SEEN.append(receipt)
    return receipt


ORDER_JSON = {"id": "o-1", "lines": [{"sku": "a", "qty": 2}, {"sku": "b"}], "color": "blue"}


async def test_dataclass_input_steps_and_output() -> None:
    SEEN.clear()
    runner = Runner(typed, workflow_input=ORDER_JSON)
    result = await runner.run()
    assert outcome_name(result) == "completed"
    order, receipt = SEEN
    assert order == Order("o-1", [Line("a", 2), Line("b", 1)], Color.BLUE)
    assert isinstance(receipt, Receipt)
    assert receipt.first == Line("a", 2)
    assert receipt.at == datetime(2024, 1, 2, tzinfo=UTC)
    assert receipt.ref == uuid.UUID(int=7)
    assert payload_value(result.output) == {
        "order_id": "o-1",
        "total": 7.5,
        "first": {"sku": "a", "qty": 2},
        "at": "2024-01-02T00:00:00+00:00",
        "ref": str(uuid.UUID(int=7)),
    }
    # On replay the body gets an equal value rebuilt from the journal.
    SEEN.clear()
    await runner.run()
    assert SEEN[1] == receipt


async def test_an_input_that_does_not_fit_the_hint_fails_the_run() -> None:
    result = await Runner(typed, workflow_input={"lines": []}).run()
    assert outcome_name(result) == "failed"
    assert result.error.type == "TypeError"


def test_round_trips() -> None:
    cases: list[tuple[Any, Any]] = [
        ((1, "a"), tuple[int, str]),
        ((1, 2), tuple[int, ...]),
        ({"a": Line("x")}, dict[str, Line]),
        (None, Line | None),
        (Line("x"), Line | None),
        ([Line("x")], list[Line]),
        (frozenset({3, 1}), frozenset[int]),
        (Color.RED, Color),
        (date(2024, 5, 6), date),
        ("b", Literal["a", "b"]),
        (2.0, Annotated[float, "meta"]),
        (3, float),
        ({"k": [1]}, Any),
    ]
    for value, hint in cases:
        assert decode(encode(value), hint) == value, hint


def test_encoding_is_deterministic_and_strict() -> None:
    assert to_jsonable({3, 1, 2}) == [1, 2, 3]
    assert to_jsonable({1: "a", Color.RED: "b"}) == {"1": "a", "red": "b"}
    with pytest.raises(TypeError):
        to_jsonable(object())
    with pytest.raises(TypeError):
        to_jsonable({(1, 2): "tuple key"})
    with pytest.raises(ValueError):  # noqa: PT011 - json's own message
        encode(float("nan"))
    assert decode(None, int) is None
    assert decode(json_payload(None), Line | None) is None


def test_from_jsonable_leaves_unknown_shapes_alone() -> None:
    assert from_jsonable({"a": 1}, list[int]) == {"a": 1}
    assert from_jsonable([1], dict[str, int]) == [1]
    assert from_jsonable("x", int | str) == "x"
    with pytest.raises(TypeError):
        from_jsonable([1], Line)


def test_return_hints_look_through_partials_and_callables() -> None:
    import functools

    class Priced:
        def __call__(self, order: Order) -> Receipt:
            return price(order)

    assert return_hint(price) is Receipt
    assert return_hint(functools.partial(price)) is Receipt
    assert return_hint(Priced()) is Receipt
    assert return_hint(lambda: 1) is None


class DuckModel:
    """Shaped like a pydantic v2 model (model_validate / model_dump), without pydantic."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def model_validate(cls, data: Any) -> DuckModel:
        return cls(data["name"])

    def model_dump(self, *, mode: str) -> dict[str, Any]:
        assert mode == "json"
        return {"name": self.name}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DuckModel) and other.name == self.name

    __hash__ = None  # type: ignore[assignment]


def test_models_are_recognised_by_their_pydantic_v2_methods() -> None:
    assert to_jsonable([DuckModel("a")]) == [{"name": "a"}]
    assert decode(encode(DuckModel("a")), DuckModel) == DuckModel("a")

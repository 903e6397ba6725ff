"""The order saga workflow: three steps, three compensations, run in reverse on failure.

The "external systems" (a warehouse, a payment provider, a carrier) are simulated:
each step takes ``Order.step_seconds`` of wall time in a few units of work, reports
progress after each, and logs what it did. ``Order.fail_at`` names a step that fails,
to show the saga unwinding: every step that completed before it is compensated, last
first, and the run ends ``failed`` with the compensation report ``compensated``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from ledgerflow import workflow

WORKFLOW_NAME = "examples.order_saga"
"""The name the workflow is registered and started under."""

StepName = Literal["reserve_inventory", "charge_card", "ship"]
STEPS: tuple[StepName, ...] = ("reserve_inventory", "charge_card", "ship")
"""The saga's steps, in order."""


class OutOfStockError(RuntimeError):
    """The warehouse cannot reserve the items."""


class CardDeclinedError(RuntimeError):
    """The payment provider declined the charge."""


class CarrierUnavailableError(RuntimeError):
    """No carrier accepted the parcel."""


@dataclass(frozen=True)
class Order:
    """The workflow's input.

    Attributes:
        order_id: The order's id.
        sku: What is ordered.
        quantity: How many.
        amount_cents: What the card is charged.
        fail_at: The step that fails (``reserve_inventory``, ``charge_card`` or
            ``ship``; ``reserve``, ``charge`` also work), or None for a run that completes.
        step_seconds: Simulated duration of each step (0 in tests).
    """

    order_id: str
    sku: str = "sku-ledger-01"
    quantity: int = 2
    amount_cents: int = 4_200
    fail_at: str | None = None
    step_seconds: float = 0.6


@dataclass(frozen=True)
class Reservation:
    """Items held in the warehouse for an order."""

    reservation_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class Charge:
    """Money taken from the card."""

    charge_id: str
    amount_cents: int


@dataclass(frozen=True)
class Shipment:
    """A parcel handed to the carrier."""

    tracking_number: str


@dataclass(frozen=True)
class Receipt:
    """The workflow's result."""

    order_id: str
    reservation_id: str
    charge_id: str
    tracking_number: str


def _fails(order: Order, step: StepName) -> bool:
    return order.fail_at is not None and step.startswith(order.fail_at)


def _work(ctx: workflow.Context, order: Order, units: list[str]) -> None:
    """Simulate a remote call: one unit of work at a time, progress after each."""
    for done, unit in enumerate(units, 1):
        time.sleep(order.step_seconds / len(units))
        ctx.progress(completed=done, total=len(units), message=unit)


def reserve_inventory(ctx: workflow.Context, order: Order) -> Reservation:
    """Hold the order's items in the warehouse."""
    _work(ctx, order, [f"item {i + 1} of {order.quantity}" for i in range(order.quantity)])
    if _fails(order, "reserve_inventory"):
        raise OutOfStockError(f"{order.sku}: only 0 left")
    ctx.log.info("reserved %d x %s", order.quantity, order.sku)
    return Reservation(f"res-{order.order_id}", order.sku, order.quantity)


def charge_card(ctx: workflow.Context, order: Order) -> Charge:
    """Take the money."""
    _work(ctx, order, ["authorize", "capture", "receipt"])
    if _fails(order, "charge_card"):
        raise CardDeclinedError("insufficient funds")
    ctx.log.info("charged %d cents", order.amount_cents)
    return Charge(f"ch-{order.order_id}", order.amount_cents)


def ship(ctx: workflow.Context, order: Order) -> Shipment:
    """Hand the parcel to a carrier."""
    _work(ctx, order, ["pick", "pack", "label", "hand over"])
    if _fails(order, "ship"):
        raise CarrierUnavailableError("no carrier accepted the parcel")
    ctx.log.info("shipped")
    return Shipment(f"trk-{order.order_id}")


@workflow.defn(name=WORKFLOW_NAME)
async def order_saga(ctx: workflow.Context, order: Order) -> Receipt:
    """Reserve, charge, ship; on a failure, undo what was done, last step first."""
    ctx.log.info("order %s: %d x %s", order.order_id, order.quantity, order.sku)

    def release(reservation: Reservation) -> None:
        time.sleep(order.step_seconds / 3)
        ctx.log.info("released reservation %s", reservation.reservation_id)

    def refund(charge: Charge) -> None:
        time.sleep(order.step_seconds / 3)
        ctx.log.info("refunded %d cents (%s)", charge.amount_cents, charge.charge_id)

    def recall(shipment: Shipment) -> None:
        ctx.log.info("recalled parcel %s", shipment.tracking_number)

    # The step functions take ctx to report progress and log on their own channel;
    # arguments are not journaled, so passing it costs nothing on replay.
    reservation = await ctx.step(
        "reserve_inventory", reserve_inventory, ctx, order, compensate=release
    )
    charge = await ctx.step("charge_card", charge_card, ctx, order, compensate=refund)
    shipment = await ctx.step("ship", ship, ctx, order, compensate=recall)
    ctx.log.info("order %s complete", order.order_id)
    return Receipt(
        order_id=order.order_id,
        reservation_id=reservation.reservation_id,
        charge_id=charge.charge_id,
        tracking_number=shipment.tracking_number,
    )

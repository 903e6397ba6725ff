"""An order saga: reserve inventory, charge the card, ship; each step compensated.

Serve it with ``ledgerflow worker examples.order_saga`` (or ``ledgerflow dev``) and
start it with ``python -m examples.order_saga [--fail-at ship]``.
"""

from examples.order_saga.workflow import (
    WORKFLOW_NAME,
    Charge,
    Order,
    Reservation,
    Shipment,
    order_saga,
)

__all__ = ["WORKFLOW_NAME", "Charge", "Order", "Reservation", "Shipment", "order_saga"]

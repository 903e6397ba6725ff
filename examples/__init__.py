"""Example workflows, run by the test suite and served by ``ledgerflow dev``.

``ledgerflow worker examples`` serves every workflow below (they are globals of this
package); each example also has its own module, e.g. ``ledgerflow worker
examples.order_saga``, and a starter: ``python -m examples.order_saga``.

- :mod:`examples.order_saga`: reserve inventory, charge the card, ship — each step
  with a compensation; ``--fail-at ship`` shows them run in reverse.
- :mod:`examples.command_pipeline`: command steps running real subprocesses that
  generate, compile and run a small program, streaming stdout and stderr.
"""

from examples.command_pipeline import command_pipeline
from examples.order_saga import order_saga

__all__ = ["command_pipeline", "order_saga"]

"""Example workflows, run by the test suite and served by ``ledgerflow dev``.

``ledgerflow worker examples`` serves every workflow below (they are globals of this
package); each example also has its own module, e.g. ``ledgerflow worker
examples.order_saga``, and a starter: ``python -m examples.order_saga``.

- :mod:`examples.order_saga`: reserve inventory, charge the card, ship — each step
  with a compensation; ``--fail-at ship`` shows them run in reverse.
- :mod:`examples.command_pipeline`: command steps running real subprocesses that
  generate, compile and run a small program, streaming stdout and stderr.
- :mod:`examples.approval`: build a report, wait for a person's ``approve`` signal
  with a durable deadline, then publish, with a durable sleep between the attempts
  of a flaky publish; ``--reject`` and ``--timeout S`` show the other endings.
- :mod:`examples.polyglot`: a Python workflow whose step runs on a TypeScript
  worker (``examples/polyglot/worker.ts``, started separately with Node: see
  ``python -m examples.polyglot --help``).
"""

from examples.approval import approval
from examples.command_pipeline import command_pipeline
from examples.order_saga import order_saga
from examples.polyglot import polyglot

__all__ = ["approval", "command_pipeline", "order_saga", "polyglot"]

"""A Python workflow calling a TypeScript step worker (``worker.ts``).

Serve the workflow with ``ledgerflow worker examples.polyglot`` (or ``ledgerflow
dev``), run the TypeScript worker (see :mod:`examples.polyglot.__main__`), and start
a run with ``python -m examples.polyglot``.
"""

from examples.polyglot.workflow import WORKER_KIND, WORKFLOW_NAME, Notes, Release, polyglot

__all__ = ["WORKER_KIND", "WORKFLOW_NAME", "Notes", "Release", "polyglot"]

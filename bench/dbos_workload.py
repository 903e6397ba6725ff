"""The DBOS Transact half of bench/workflows.py: the same workload, run in DBOS's own venv.

bench/workflows.py runs this with the python of ``bench/.venv-dbos`` (where pip ``dbos`` is
installed; never in the project's .venv), after its own measurement, against a second
database on the same private PostgreSQL cluster. DBOS keeps all its state (workflow status,
step outputs) in that system database; there is no application database, as the steps
touch none.

The workload is a workflow of K trivial steps (``@DBOS.step()`` returning its input) in the
ordinary synchronous DBOS style:

- **sequential**: N workflows one at a time, each ``DBOS.start_workflow(...)`` then
  ``handle.get_result()``, timed from start to result;
- **concurrent**: N ``DBOS.start_workflow(...)`` at once (each runs on a DBOS executor
  thread; the pool gets ``--concurrency`` threads, as the ledgerflow worker gets that many
  task slots), then every ``get_result()``, timed as a whole.

Prints one JSON line on stdout: the DBOS version, the sequential latencies in ms and the
concurrent run's wall time in seconds; bench/workflows.py computes the figures from them
exactly as it does for ledgerflow.

Usage: ``python bench/dbos_workload.py --system-database-url URL [--workflows N]
[--steps K] [--concurrency C]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from importlib.metadata import version

from dbos import DBOS, DBOSConfig


@DBOS.step()
def noop(i: int) -> int:
    """A trivial step: returns its input."""
    return i


@DBOS.workflow()
def bench(steps: int) -> int:
    """K trivial steps in sequence."""
    total = 0
    for i in range(steps):
        total += noop(i)
    return total


def main() -> None:
    """Launch DBOS, run the workload, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system-database-url", required=True)
    parser.add_argument("--workflows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    config: DBOSConfig = {
        "name": "ledgerflow-bench",
        "system_database_url": args.system_database_url,
        "max_executor_threads": args.concurrency,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        expected = sum(range(args.steps))
        # Warm-up: connections, statement caches, imports.
        assert DBOS.start_workflow(bench, args.steps).get_result() == expected
        latencies = []
        for _ in range(args.workflows):
            began = time.perf_counter()
            result = DBOS.start_workflow(bench, args.steps).get_result()
            latencies.append((time.perf_counter() - began) * 1000)
            assert result == expected
        began = time.perf_counter()
        handles = [DBOS.start_workflow(bench, args.steps) for _ in range(args.workflows)]
        results = [handle.get_result() for handle in handles]
        elapsed = time.perf_counter() - began
        assert results == [expected] * args.workflows
    finally:
        DBOS.destroy()
    print(
        json.dumps(
            {
                "dbos_version": version("dbos"),
                "latencies_ms": latencies,
                "concurrent_seconds": elapsed,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

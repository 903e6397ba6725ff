"""The workload of ``bench/load.py``, and the worker process that serves it.

``load({"steps": N, "step_delay": S})`` runs N quick async steps (each sleeps S
seconds, 0 by default: a longer-lived run without more CPU), each followed by one
log line, and returns ``expected_result(N)``; ``bench/load.py`` checks every run's
result against it.

Run as a script, this is one worker *process* hosting several ``Worker``s, each with
its own channel (and TCP connection) and its own ``WorkerService.Connect`` session,
so 50 sessions do not need 50 Python interpreters on a small machine. It prints
``ready N`` once every worker is connected, and drains them all on SIGTERM or SIGINT.

Usage: ``python bench/load_app.py --address HOST:PORT [--workers N] [--slots S]
[--name PREFIX]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ledgerflow import workflow
from ledgerflow.worker import Worker


async def add(total: int, i: int, delay: float) -> int:
    """One step's work: trivial, so the figures measure ledgerflow, not the step."""
    if delay:
        await asyncio.sleep(delay)
    return total + i + 1


def expected_result(steps: int) -> int:
    """What ``load(steps)`` returns: 1 + 2 + ... + steps."""
    return steps * (steps + 1) // 2


@workflow.defn(name="load")
async def load(ctx: workflow.Context, spec: dict[str, float]) -> int:
    """``spec["steps"]`` durable steps, a log line after each."""
    steps, delay = int(spec["steps"]), float(spec.get("step_delay", 0.0))
    total = 0
    for i in range(steps):
        total = await ctx.step(f"s{i}", add, total, i, delay)
        ctx.log.info("step %d of %d done, total %d", i + 1, steps, total)
    return total


async def serve(args: argparse.Namespace) -> None:
    """Run ``args.workers`` workers until SIGTERM or SIGINT, then drain them."""
    workers = [
        Worker(
            args.address,
            [load],
            max_concurrent_tasks=args.slots,
            identity=f"{args.name}-{i}",
            # Without it gRPC shares one TCP connection between channels to the same
            # target with the same options: each worker gets a connection of its own, as
            # separate machines would.
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        for i in range(args.workers)
    ]

    def drain() -> None:
        for w in workers:
            w.drain(args.drain_timeout)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, drain)
    runners = [asyncio.create_task(w.run()) for w in workers]
    await asyncio.gather(*(w.wait_connected() for w in workers))
    print(f"ready {len(workers)}", flush=True)
    await asyncio.gather(*runners)


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--workers", type=int, default=10, help="Worker sessions in this process")
    parser.add_argument("--slots", type=int, default=10, help="max concurrent tasks per worker")
    parser.add_argument("--name", default="load", help="identity prefix")
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    args = parser.parse_args()
    # INFO: reconnects, refusals and tasks handed back (bench/load.py counts those).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

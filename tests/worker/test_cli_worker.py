"""``ledgerflow worker`` as a real subprocess against the scripted coordinator.

The coordinator is served by the test's event loop, so the command is started with
asyncio's subprocess API: awaiting it keeps the loop, and the server, running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ledgerflow.ledger import payload_value
from ledgerflow.v1 import workflow_pb2
from tests.worker.scripted import Served

BIN = Path(sys.executable).parent / "ledgerflow"

APP = """
import os
import time

from ledgerflow import workflow
from ledgerflow.worker import Worker


def greet(name: str) -> str:
    return f"hello {name}"


def wait_for_file(path: str) -> str:
    # A sync step that runs until the test creates the file.
    while not os.path.exists(path):
        time.sleep(0.01)
    return "done"


@workflow.defn(name="cli.hello")
async def hello(ctx: workflow.Context, name: str) -> str:
    return await ctx.step("greet", greet, name)


@workflow.defn(name="cli.slow", version="1")
async def slow(ctx: workflow.Context, path: str) -> str:
    return await ctx.step("wait", wait_for_file, path)


only_hello = workflow.Registry([hello])
worker = Worker(os.environ.get("APP_ADDRESS", "127.0.0.1:1"), [slow], identity="from-code")
"""


@dataclass
class Cli:
    proc: asyncio.subprocess.Process
    stderr_lines: list[str]

    async def wait_for_stderr(self, text: str) -> None:
        """Read stderr until a line contains ``text``."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(10):
            while not any(text in line for line in self.stderr_lines):
                line = await self.proc.stderr.readline()
                assert line, f"stderr ended without {text!r}: {self.stderr_lines}"
                self.stderr_lines.append(line.decode())

    async def finish(self) -> tuple[int, str]:
        """Wait for the exit; return the status and all of stderr."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(20):
            rest = await self.proc.stderr.read()
            code = await self.proc.wait()
        return code, "".join(self.stderr_lines) + rest.decode()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


@pytest.fixture
async def cli(app_dir: Path) -> AsyncIterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


async def start(
    started: list[Cli], cwd: Path, *args: str, env: dict[str, str] | None = None
) -> Cli:
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        "worker",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    running = Cli(proc, [])
    started.append(running)
    return running


async def test_serves_the_module_from_the_current_directory_and_exits_0_on_sigterm(
    served: Served, app_dir: Path, cli: list[Cli]
) -> None:
    coordinator = served.coordinator
    worker = await start(
        cli,
        app_dir,
        "app",
        "--address",
        served.address,
        "--identity",
        "cli-test",
        "--max-concurrent-tasks",
        "4",
    )
    session = await coordinator.wait_for_session(1)
    assert sorted((w.name, w.version) for w in session.hello.workflows) == [
        ("cli.hello", ""),
        ("cli.slow", "1"),
    ]
    assert session.hello.identity == "cli-test"
    assert session.hello.max_concurrent_tasks == 4
    task = coordinator.dispatch("cli.hello", "ada")
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert payload_value(coordinator.results[task.task_id].output) == "hello ada"

    worker.proc.send_signal(signal.SIGTERM)
    code, stderr = await worker.finish()
    assert code == 0, stderr
    assert session.worker_closed
    assert coordinator.releases == []


async def test_sigterm_lets_the_running_task_finish_first(
    served: Served, app_dir: Path, cli: list[Cli], tmp_path: Path
) -> None:
    coordinator = served.coordinator
    worker = await start(cli, app_dir, "app", "--address", served.address)
    await coordinator.wait_for_session(1)
    flag = tmp_path / "flag"
    task = coordinator.dispatch("cli.slow", str(flag), version="1")
    await coordinator.wait_until(
        lambda: coordinator.ledger(task.run_id).of_type("step_started"), "the step started"
    )
    worker.proc.send_signal(signal.SIGTERM)
    await worker.wait_for_stderr("SIGTERM: draining")
    flag.touch()
    code, stderr = await worker.finish()
    assert code == 0, stderr
    result = coordinator.results[task.task_id]
    assert result.outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPLETED
    assert payload_value(result.output) == "done"
    assert coordinator.releases == []
    # The step's thread finished: idle executor threads are no reason to warn.
    assert "still run" not in stderr


async def test_a_second_signal_hands_the_running_task_back_and_exits_0(
    served: Served, app_dir: Path, cli: list[Cli], tmp_path: Path
) -> None:
    coordinator = served.coordinator
    worker = await start(cli, app_dir, "app", "--address", served.address, "--drain-timeout", "600")
    await coordinator.wait_for_session(1)
    task = coordinator.dispatch("cli.slow", str(tmp_path / "never"), version="1")
    await coordinator.wait_until(
        lambda: coordinator.ledger(task.run_id).of_type("step_started"), "the step started"
    )
    worker.proc.send_signal(signal.SIGINT)
    await worker.wait_for_stderr("SIGINT: draining")
    worker.proc.send_signal(signal.SIGTERM)
    code, stderr = await worker.finish()
    assert code == 0, stderr
    assert [(r.task_id, r.lease_epoch) for r in coordinator.releases] == [(task.task_id, 1)]
    assert task.task_id not in coordinator.results
    assert "exiting while 1 step thread(s) still run" in stderr


async def test_attr_selects_a_registry_a_definition_or_a_worker(
    served: Served, app_dir: Path, cli: list[Cli]
) -> None:
    coordinator = served.coordinator
    expected = {
        "app:only_hello": [("cli.hello", "")],
        "app:slow": [("cli.slow", "1")],
        "app:worker": [("cli.slow", "1")],
    }
    for number, (target, workflows) in enumerate(expected.items(), 1):
        worker = await start(
            cli,
            app_dir,
            target,
            *([] if target == "app:worker" else ["--address", served.address]),
            env={"APP_ADDRESS": served.address},
        )
        session = await coordinator.wait_for_session(number)
        assert [(w.name, w.version) for w in session.hello.workflows] == workflows, target
        if target == "app:worker":
            assert session.hello.identity == "from-code"
        worker.proc.send_signal(signal.SIGTERM)
        code, stderr = await worker.finish()
        assert code == 0, stderr


async def test_address_and_capacity_come_from_the_environment(
    served: Served, app_dir: Path, cli: list[Cli]
) -> None:
    worker = await start(
        cli,
        app_dir,
        "app",
        env={"LEDGERFLOW_ADDRESS": served.address, "LEDGERFLOW_MAX_CONCURRENT_TASKS": "7"},
    )
    session = await served.coordinator.wait_for_session(1)
    assert session.hello.max_concurrent_tasks == 7
    worker.proc.send_signal(signal.SIGTERM)
    code, stderr = await worker.finish()
    assert code == 0, stderr


async def test_the_namespace_comes_from_the_flag_or_the_environment(
    served: Served, app_dir: Path, cli: list[Cli]
) -> None:
    flagged = await start(cli, app_dir, "app", "--address", served.address, "--namespace", "eu")
    assert (await served.coordinator.wait_for_session(1)).hello.namespace == "eu"
    from_env = await start(
        cli,
        app_dir,
        "app",
        "--address",
        served.address,
        env={"LEDGERFLOW_NAMESPACE": "us"},
    )
    assert (await served.coordinator.wait_for_session(2)).hello.namespace == "us"
    for worker in (flagged, from_env):
        worker.proc.send_signal(signal.SIGTERM)
        code, stderr = await worker.finish()
        assert code == 0, stderr


async def test_a_refused_worker_exits_1_naming_the_refusal(
    served: Served, app_dir: Path, cli: list[Cli]
) -> None:
    served.coordinator.refuse_hello = (grpc.StatusCode.UNIMPLEMENTED, "no WorkerService here")
    worker = await start(cli, app_dir, "app", "--address", served.address)
    code, stderr = await worker.finish()
    assert code == 1, stderr
    assert stderr.splitlines()[-1] == (
        f"ledgerflow: the coordinator at {served.address} refused the worker: "
        "UNIMPLEMENTED: no WorkerService here"
    )


BAD_TARGETS = [
    ("nosuch", "ledgerflow: cannot import 'nosuch': no such module in "),
    ("app:nothing", "ledgerflow: module 'app' has no attribute 'nothing'"),
    ("app:greet", "ledgerflow: app:greet is a function, not a Worker"),
    ("app:", "ledgerflow: 'app:' is not MODULE or MODULE:ATTR"),
    ("empty", "ledgerflow: no workflows found in module 'empty'"),
    ("broken", "ledgerflow: cannot import 'broken': RuntimeError: boom ("),
    ("needs_dep", "ledgerflow: cannot import 'needs_dep': ModuleNotFoundError: No module named"),
    ("typo", "ledgerflow: cannot import 'typo': SyntaxError: "),
]


@pytest.mark.parametrize(("target", "message"), BAD_TARGETS)
async def test_an_unusable_target_is_one_line_and_exit_2(
    app_dir: Path, cli: list[Cli], target: str, message: str
) -> None:
    (app_dir / "empty.py").write_text("X = 1\n")
    (app_dir / "broken.py").write_text("raise RuntimeError('boom')\n")
    (app_dir / "needs_dep.py").write_text("import surely_not_installed_dep\n")
    (app_dir / "typo.py").write_text(textwrap.dedent("def f(:\n    pass\n"))
    worker = await start(cli, app_dir, target, "--address", "127.0.0.1:1")
    code, stderr = await worker.finish()
    assert code == 2
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(message), stderr


async def test_worker_flags_cannot_reconfigure_a_worker_object(
    app_dir: Path, cli: list[Cli]
) -> None:
    worker = await start(
        cli, app_dir, "app:worker", "--identity", "x", "--address", "h:1", "--namespace", "eu"
    )
    code, stderr = await worker.finish()
    assert code == 2
    assert stderr == (
        "ledgerflow: app:worker is a Worker, configured in code: --address, --identity, "
        "--namespace cannot change it\n"
    )


async def test_a_bad_capacity_in_the_environment_is_exit_2(app_dir: Path, cli: list[Cli]) -> None:
    worker = await start(cli, app_dir, "app", env={"LEDGERFLOW_MAX_CONCURRENT_TASKS": "lots"})
    code, stderr = await worker.finish()
    assert code == 2
    assert stderr == "ledgerflow: LEDGERFLOW_MAX_CONCURRENT_TASKS: 'lots' is not a whole number\n"

"""A build pipeline of command steps: generate sources, compile them, run the program.

Each stage is ``ctx.run_command``: a real subprocess of the worker whose stdout and
stderr stream into the run's log while it runs (channels ``step:<id>:stdout`` and
``step:<id>:stderr``), with a summary checkpoint when it starts and a log-tail
checkpoint when it ends. The "toolchain" is the worker's own Python (generated
modules, ``compileall``, then the program), so the example runs wherever ledgerflow
does. The last stage reports its summary and artifacts through the result file
(``$LEDGERFLOW_RESULT_FILE``), as a real build tool wrapper would.

A workspace that stays put is part of the journal: the ``workspace`` step returns the
directory, so a replay after a worker crash builds in the same place.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ledgerflow import workflow

WORKFLOW_NAME = "examples.command_pipeline"
"""The name the workflow is registered and started under."""

# `python generate.py DIR N`: writes N modules and a main program, one stdout line each.
GENERATE = """
import sys
from pathlib import Path

root, count = Path(sys.argv[1]), int(sys.argv[2])
for i in range(count):
    (root / f"stage_{i}.py").write_text(f"def value():\\n    return {i} * {i}\\n")
    print(f"wrote stage_{i}.py", flush=True)
imports = "".join(f"import stage_{i}\\n" for i in range(count))
body = "".join(
    f"print('stage_{i} ->', stage_{i}.value(), flush=True)\\n"
    f"print('stage_{i}: checked', file=sys.stderr, flush=True)\\n"
    for i in range(count)
)
total = " + ".join(f"stage_{i}.value()" for i in range(count)) or "0"
result = (
    "import json, os\\n"
    f"total = {total}\\n"
    "print('total', total, flush=True)\\n"
    "with open(os.environ['LEDGERFLOW_RESULT_FILE'], 'w') as f:\\n"
    "    json.dump({'summary': f'total {total}', 'artifacts': ["
    "{'name': 'main', 'kind': 'file', 'path': 'main.py'}]}, f)\\n"
)
(root / "main.py").write_text("import sys\\n" + imports + body + result)
print("wrote main.py", flush=True)
"""


@dataclass(frozen=True)
class Pipeline:
    """The workflow's input.

    Attributes:
        stages: How many modules to generate.
        workdir: Where to build; a new temporary directory when None.
    """

    stages: int = 3
    workdir: str | None = None


@dataclass(frozen=True)
class Build:
    """The workflow's result."""

    workdir: str
    total: int
    summary: str
    artifacts: list[str]
    stdout_lines: int
    stderr_lines: int


def make_workspace(workdir: str | None) -> str:
    """Create (or reuse) the build directory and put the generator in it."""
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ledgerflow-pipeline-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "generate.py").write_text(GENERATE)
    return str(root)


def remove_workspace(workdir: str) -> None:
    """Compensation of ``workspace``: a failed build leaves nothing behind."""
    shutil.rmtree(workdir, ignore_errors=True)


@workflow.defn(name=WORKFLOW_NAME)
async def command_pipeline(ctx: workflow.Context, pipeline: Pipeline) -> Build:
    """Generate, compile and run a small program, each stage a command step."""
    root = await ctx.step(
        "workspace", make_workspace, pipeline.workdir, compensate=remove_workspace
    )
    ctx.log.info("building %d stages in %s", pipeline.stages, root)
    python = sys.executable
    await ctx.run_command(
        [python, "generate.py", root, str(pipeline.stages)],
        name="generate",
        cwd=root,
        summary=f"generate {pipeline.stages} modules",
    )
    await ctx.run_command(
        [python, "-m", "compileall", "-f", "."], name="compile", cwd=root, summary="byte-compile"
    )
    run = await ctx.run_command(
        [python, "main.py"], name="run", cwd=root, summary="run the program", timeout=60
    )
    # The program said what it computed in its result file: "total <n>".
    total = int(run.summary.removeprefix("total "))
    ctx.log.info("built: %s", run.summary)
    return Build(
        workdir=root,
        total=total,
        summary=run.summary,
        artifacts=[artifact.uri for artifact in run.artifacts],
        stdout_lines=run.metrics.stdout_line_count,
        stderr_lines=run.metrics.stderr_line_count,
    )

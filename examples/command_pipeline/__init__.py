"""A pipeline of command steps: real subprocesses with streamed stdout and stderr.

Serve it with ``ledgerflow worker examples.command_pipeline`` (or ``ledgerflow
dev``) and start it with ``python -m examples.command_pipeline``.
"""

from examples.command_pipeline.workflow import WORKFLOW_NAME, Build, Pipeline, command_pipeline

__all__ = ["WORKFLOW_NAME", "Build", "Pipeline", "command_pipeline"]

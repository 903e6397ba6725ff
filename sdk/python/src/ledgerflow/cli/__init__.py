"""The ``ledgerflow`` command line."""

from ledgerflow.cli._main import main

__all__ = ["main"]

"""``python -m ledgerflow.coordinator``: the same as ``ledgerflow server``."""

import sys

from ledgerflow.cli import main

sys.exit(main(["server", *sys.argv[1:]]))

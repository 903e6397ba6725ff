"""``python -m ledgerflow.cli``: the ``ledgerflow`` command, where its script is not on PATH."""

import sys

from ledgerflow.cli import main

sys.exit(main())

"""Every conformance vector file runs under pytest (the TypeScript suite checks the same).

``sdk/typescript/test/vectors.test.ts`` fails when a file in ``tests/vectors`` has no
runner there; this is the Python half, so a vector added for one SDK cannot silently
skip the other.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.ledger import test_vectors

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def test_every_vector_file_is_loaded_by_test_vectors() -> None:
    source = Path(test_vectors.__file__).read_text(encoding="utf-8")
    loaded = set(re.findall(r'load_cases\("([^"]+\.json)"\)', source))
    on_disk = {path.name for path in VECTORS.glob("*.json")}
    assert on_disk, f"no vector files in {VECTORS}"
    assert on_disk - loaded == set()

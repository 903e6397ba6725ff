"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Its assert helpers should explain failures like test code does.
pytest.register_assert_rewrite("tests.reference_oracle")

from tests.reference_oracle import ReferenceOracle, unavailable_reason  # noqa: E402


@pytest.fixture(scope="session")
def reference_oracle() -> Iterator[ReferenceOracle]:
    """The reference oracle (one node process per session).

    Skips the requesting test when the reference sources (``../shared/reference``) or node
    are missing; set ``LEDGERFLOW_REQUIRE_REFERENCE=1`` to fail instead of skipping.
    """
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("LEDGERFLOW_REQUIRE_REFERENCE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with ReferenceOracle() as oracle:
        yield oracle

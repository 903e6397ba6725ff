"""Client for the reference oracle (tests/oracle/reference_oracle.mjs).

The oracle runs the reference TypeScript algorithms (DESIGN.md §3) in one node process and
answers JSON-line requests. The reference sources are not part of this repository: they are
read at run time from ``<repo>/../shared/reference`` (``LEDGERFLOW_REFERENCE_DIR`` overrides).
Only the differential tests and ``tests/vectors/generate.py`` need the oracle; the committed
vectors are checked without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ORACLE_SCRIPT = REPO_ROOT / "tests" / "oracle" / "reference_oracle.mjs"
TYPESCRIPT_PACKAGE = REPO_ROOT / "sdk" / "typescript" / "node_modules" / "typescript"

JsonObject = dict[str, Any]


class OracleUnavailableError(RuntimeError):
    """The oracle cannot run here (no reference sources, no node, no typescript)."""


class OracleError(RuntimeError):
    """The oracle answered a request with an error."""


def reference_dir() -> Path:
    """Return the directory holding the reference sources."""
    override = os.environ.get("LEDGERFLOW_REFERENCE_DIR")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "reference"


def unavailable_reason() -> str | None:
    """Return why the oracle cannot run here, or None when it can."""
    ref = reference_dir()
    for prefix in ("000_", "003_"):
        if not any(ref.glob(f"{prefix}*.txt")):
            return (
                f"reference oracle unavailable: no {prefix}*.txt in {ref} (the reference "
                "sources live beside the repository in ../shared/reference; set "
                "LEDGERFLOW_REFERENCE_DIR to point elsewhere)"
            )
    if shutil.which("node") is None:
        return "reference oracle unavailable: `node` is not on PATH"
    if not (TYPESCRIPT_PACKAGE / "package.json").is_file():
        return (
            "reference oracle unavailable: sdk/typescript/node_modules/typescript is missing "
            "(run `npm ci` in sdk/typescript)"
        )
    return None


class ReferenceOracle:
    """One node process serving oracle requests, one JSON line each way."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise OracleUnavailableError(reason)
        node = shutil.which("node")
        assert node is not None
        self._proc = subprocess.Popen(
            [node, str(ORACLE_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        try:
            self.request({"op": "ping"})
        except OracleError as err:
            self.close()
            raise OracleUnavailableError(f"reference oracle failed to start: {err}") from err

    def __enter__(self) -> ReferenceOracle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the node process."""
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def request(self, request: JsonObject) -> JsonObject:
        """Send one request and return the oracle's answer.

        Raises:
            OracleError: the oracle answered with an error or died.
        """
        proc = self._proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        line = json.dumps(request, ensure_ascii=True, allow_nan=False) + "\n"
        try:
            proc.stdin.write(line.encode("ascii"))
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported below from the exit status and stderr
        answer = proc.stdout.readline()
        if not answer:
            proc.wait(timeout=10)
            stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
            raise OracleError(f"oracle exited with {proc.returncode}: {stderr.strip()}")
        response = json.loads(answer.decode("utf-8"))
        if not isinstance(response, dict):
            raise OracleError(f"unexpected oracle answer: {response!r}")
        if "error" in response:
            raise OracleError(str(response["error"]))
        return response

    def reduce(self, events: list[JsonObject]) -> list[JsonObject]:
        """Reduce ``events`` grouped per run id; one snapshot per run, first-seen order."""
        snapshots: list[JsonObject] = self.request({"op": "reduce", "events": events})["snapshots"]
        return snapshots

    def reduce_one(self, run_id: str, events: list[JsonObject]) -> JsonObject:
        """Reduce every event (whatever its run id) into the empty snapshot of ``run_id``."""
        snapshot: JsonObject = self.request({"op": "reduceOne", "runId": run_id, "events": events})[
            "snapshot"
        ]
        return snapshot

    def slice(
        self, buffer_lines: list[str], buffer_total_count: int, sent_count: int
    ) -> JsonObject | None:
        """Return ``slicePositionalLogLines`` of the arguments."""
        result: JsonObject | None = self.request(
            {
                "op": "slice",
                "bufferLines": buffer_lines,
                "bufferTotalCount": buffer_total_count,
                "sentCount": sent_count,
            }
        )["slice"]
        return result

    def status_patch(
        self,
        patch: JsonObject,
        previous_events: list[JsonObject],
        now: int,
        source: str | None = None,
    ) -> list[JsonObject]:
        """Return ``buildPlayRunLedgerEventsFromStatusPatch`` events.

        The previous snapshot is ``previous_events`` reduced from the empty snapshot of
        ``patch["runId"]``.
        """
        request: JsonObject = {
            "op": "statusPatch",
            "patch": patch,
            "previousEvents": previous_events,
            "now": now,
        }
        if source is not None:
            request["source"] = source
        events: list[JsonObject] = self.request(request)["events"]
        return events

    def random(self, run_id: str, count: int) -> list[float]:
        """Return the first ``count`` draws of ``createRandom(run_id)``."""
        values: list[float] = self.request({"op": "random", "runId": run_id, "count": count})[
            "values"
        ]
        return values

    def uuid(self, run_id: str, count: int) -> list[str]:
        """Return the first ``count`` uuids of a fresh stream for ``run_id``."""
        values: list[str] = self.request({"op": "uuid", "runId": run_id, "count": count})["values"]
        return values

    def sequence(self, run_id: str, calls: list[str]) -> list[float | str]:
        """Interleave ``random``/``uuid`` calls on one stream for ``run_id``."""
        values: list[float | str] = self.request(
            {"op": "sequence", "runId": run_id, "calls": calls}
        )["values"]
        return values

    def hash(self, run_id: str) -> int:
        """Return ``hashSeed(run_id)`` (FNV-1a-32 over UTF-16 code units)."""
        value: int = self.request({"op": "hash", "runId": run_id})["hash"]
        return value


def drop_nulls(value: Any) -> Any:
    """Return ``value`` with object keys whose value is null dropped, recursively.

    The reference distinguishes a null field from an absent one only in its JSON; ledgerflow
    treats them as the same (documented deviation), so comparisons go through this.
    """
    if isinstance(value, dict):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_nulls(item) for item in value]
    return value


_MAX_SAFE_INTEGER = 2**53 - 1


def comparable(value: Any) -> Any:
    """Return ``value`` ready to compare with another JSON value as JavaScript would.

    Null-valued keys are dropped (see :func:`drop_nulls`), and numbers get JavaScript's
    semantics (every number is a double): ``1.0`` becomes ``1`` and an integer beyond 2**53
    becomes the double it denotes (the reference prints ``6.157692768611966e16`` as
    ``61576927686119660``).
    """
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [comparable(item) for item in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > _MAX_SAFE_INTEGER:
        value = float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
        return int(value)
    return value


def assert_same_json(ours: Any, expected: Any) -> None:
    """Assert two JSON values are equal after :func:`comparable`.

    Compares the structures (for a readable diff) and their canonical text (so ``true`` is
    not taken for ``1`` as Python's ``==`` would).
    """
    left, right = comparable(ours), comparable(expected)
    assert left == right
    assert json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)

"""`ledgerflow run ...` refuses bad input with exit status 2 and one line on stderr."""

from __future__ import annotations

import pytest

from ledgerflow.cli._main import main

# No coordinator runs at this address: each case must be refused before connecting,
# or be refused as unreachable in one line (also status 2).
ADDRESS = "127.0.0.1:9"
CASES: dict[str, list[str]] = {
    "no-subcommand": ["run"],
    "unknown-subcommand": ["run", "explode"],
    "start/no-workflow": ["run", "start"],
    "start/bad-json": ["run", "start", "wf", "--input", "{"],
    "start/nan-input": ["run", "start", "wf", "--input", "NaN"],
    "start/unknown-flag": ["run", "start", "wf", "--bogus"],
    "list/bad-status": ["run", "list", "--status", "exploded"],
    "list/negative-limit": ["run", "list", "--limit", "-1"],
    "list/not-a-number": ["run", "list", "--limit", "ten"],
    "list/bad-time": ["run", "list", "--created-after", "yesterday"],
    "show/no-id": ["run", "show"],
    "show/negative-lines": ["run", "show", "r1", "--log-lines", "-3"],
    "events/negative-after": ["run", "events", "r1", "--after", "-1"],
    "events/huge-after": ["run", "events", "r1", "--after", "1e30"],
    "logs/negative-from": ["run", "logs", "r1", "--from", "-2"],
    "cancel/no-id": ["run", "cancel"],
    "signal/no-name": ["run", "signal", "r1"],
    "signal/bad-payload": ["run", "signal", "r1", "s", "--payload", "[1,"],
    "signal/infinity": ["run", "signal", "r1", "s", "--payload", "Infinity"],
    "watch/negative-after": ["run", "watch", "r1", "--after", "-5"],
    "result/zero-timeout": ["run", "result", "r1", "--timeout", "0"],
    "result/nan-timeout": ["run", "result", "r1", "--timeout", "nan"],
    "result/negative-timeout": ["run", "result", "r1", "--timeout", "-1"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_with_one_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*CASES[name], "--address", ADDRESS] if name != "no-subcommand" else CASES[name]
    try:
        status: object = main(argv)
    except SystemExit as exited:  # argparse exits; command bodies return their status
        status = exited.code
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err

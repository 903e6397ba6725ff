"""The pure pieces both clients share: status names, error mapping, identity, surface."""

from __future__ import annotations

import importlib

import grpc
import pytest

from ledgerflow.client import _errors, _requests
from ledgerflow.errors import (
    STATUS_CODE_NAMES,
    CoordinatorUnavailableError,
    InvalidArgumentError,
    LedgerflowError,
)
from ledgerflow.v1 import ledger_pb2


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("running", ledger_pb2.RUN_STATUS_RUNNING),
        (" Timed_Out ", ledger_pb2.RUN_STATUS_TIMED_OUT),
        ("RUN_STATUS_QUEUED", ledger_pb2.RUN_STATUS_QUEUED),
        (ledger_pb2.RUN_STATUS_FAILED, ledger_pb2.RUN_STATUS_FAILED),
        (4, ledger_pb2.RUN_STATUS_COMPLETED),
    ],
)
def test_run_status_accepts_values_names_and_short_names(
    given: int | str, want: ledger_pb2.RunStatus.ValueType
) -> None:
    assert _requests.run_status(given) == want


def test_status_name_is_the_inverse_and_survives_unknown_values() -> None:
    for value in ledger_pb2.RunStatus.values():
        assert _requests.run_status(_requests.status_name(value)) == value
    assert _requests.status_name(ledger_pb2.RunStatus.ValueType(42)) == "42"


def test_every_error_of_the_house_table_comes_back_from_its_code() -> None:
    for error, name in STATUS_CODE_NAMES.items():
        mapped = _errors.from_rpc_error(_Failed(grpc.StatusCode[name], "x: y"), "a:1")
        assert type(mapped) is error, name


def test_a_status_without_details_still_says_something() -> None:
    assert str(_errors.from_rpc_error(_Failed(grpc.StatusCode.NOT_FOUND, None), "a:1")) == (
        "NOT_FOUND"
    )
    unknown = _errors.from_rpc_error(_Failed(grpc.StatusCode.CANCELLED, ""), "a:1")
    assert (type(unknown), str(unknown)) == (LedgerflowError, "CANCELLED")
    down = _errors.from_rpc_error(_Failed(grpc.StatusCode.UNAVAILABLE, None), "a:1")
    assert isinstance(down, CoordinatorUnavailableError)
    assert str(down) == "cannot reach the coordinator at a:1: unavailable"


def test_an_rpc_error_without_a_status_is_unknown() -> None:
    mapped = _errors.from_rpc_error(grpc.RpcError(), "a:1")
    assert (type(mapped), str(mapped)) == (LedgerflowError, "UNKNOWN")


def test_invalid_argument_keeps_a_multiline_problem_whole() -> None:
    error = _errors.invalid_argument("input: not JSON:\nline 2")
    assert isinstance(error, InvalidArgumentError)
    assert (error.field, error.problem) == ("input", "not JSON:\nline 2")


def test_default_identity_is_user_at_host() -> None:
    user, _, host = _requests.default_identity().partition("@")
    assert user
    assert host


def test_public_names_are_exactly_these() -> None:
    client = importlib.import_module("ledgerflow.client")
    assert sorted(client.__all__) == sorted(
        [
            "DEFAULT_CONNECT_TIMEOUT",
            "DEFAULT_RPC_TIMEOUT",
            "Client",
            "EventsPage",
            "ListRunsPage",
            "RunStatusLike",
            "StartRunResult",
            "SyncClient",
        ]
    )

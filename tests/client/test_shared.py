"""The pure pieces both clients share: status names, errors, identity, reconnects, surface."""

from __future__ import annotations

import importlib

import grpc
import pytest

from ledgerflow import workflow
from ledgerflow.client import _errors, _requests
from ledgerflow.errors import (
    STATUS_CODE_NAMES,
    CoordinatorUnavailableError,
    InvalidArgumentError,
    LedgerflowError,
    RunEndedError,
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
            "RunHandle",
            "RunStatusLike",
            "StartRunResult",
            "SyncClient",
            "SyncRunHandle",
        ]
    )


def test_reconnect_backs_off_exponentially_and_starts_over_after_a_snapshot() -> None:
    reconnect = _requests.Reconnect(first_delay=0.1, max_delay=1.0)
    assert [reconnect.delay(0.0) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    reconnect.received()
    assert reconnect.delay(0.0) == 0.1


def test_reconnect_gives_up_only_after_failing_for_the_whole_window() -> None:
    down = CoordinatorUnavailableError("cannot reach the coordinator at a:1: down")
    reconnect = _requests.Reconnect(give_up_after=60.0)
    reconnect.delay(100.0, down)
    reconnect.delay(159.0, down)
    reconnect.succeeded()  # reachable again (a clean stream end is not a failure)
    reconnect.delay(200.0, down)
    reconnect.delay(259.9, down)
    with pytest.raises(CoordinatorUnavailableError) as caught:
        reconnect.delay(260.0, down)
    assert caught.value is down


def test_a_terminal_status_without_its_own_error_class_is_a_run_ended_error() -> None:
    snap = ledger_pb2.RunSnapshot(run_id="r", status=ledger_pb2.RunStatus.ValueType(42))
    with pytest.raises(RunEndedError) as caught:
        _requests.run_result(snap, None)
    assert type(caught.value) is RunEndedError
    assert str(caught.value) == "run r ended without completing"


def test_workflow_target_resolves_names_and_definitions() -> None:
    @workflow.defn(name="w", version="2")
    async def body(ctx: workflow.Context, n: int) -> list[int]:
        return [n]

    assert _requests.workflow_target("w", None) == _requests.WorkflowTarget("w", "", None)
    assert _requests.workflow_target("w", "3") == _requests.WorkflowTarget("w", "3", None)
    assert _requests.workflow_target(body, None) == _requests.WorkflowTarget("w", "2", list[int])
    assert _requests.workflow_target(body, "").version == ""

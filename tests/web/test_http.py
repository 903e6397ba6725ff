"""The dashboard's JSON endpoints and event streams over real HTTP, on SQLite and Postgres.

Runs are created and advanced through the real gRPC API; the dashboard is read through
its HTTP port, as a browser would.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ledgerflow.coordinator._server import Coordinator
from ledgerflow.ledger import json_payload
from tests.web.conftest import SseReader, append, ev, start

pytestmark = pytest.mark.usefixtures("coordinator")


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


# -- pages and static files ------------------------------------------------------------


async def test_pages_and_assets_are_served_with_a_strict_content_security_policy(
    http: httpx.AsyncClient,
) -> None:
    for path, marker in [("/", "/static/runs.js"), ("/run?run_id=x", "/static/run.js")]:
        page = await http.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert marker in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("common.js", "runs.js", "run.js", "dashboard.css"):
        response = await http.get(f"/static/{asset}")
        assert response.status_code == 200, asset
        assert response.text.strip()


# -- ListRuns ----------------------------------------------------------------------------


async def test_runs_are_listed_filtered_and_paginated(http: httpx.AsyncClient, api: Any) -> None:
    for i in range(5):
        await start(api, f"r{i}", workflow="orders" if i % 2 == 0 else "billing")
    await append(api, ev("r0", "run_completed", 5, result=json_payload("ok")))

    listed = (await http.get("/api/runs")).json()
    assert [r["run_id"] for r in listed["runs"]] == ["r4", "r3", "r2", "r1", "r0"]
    assert listed["runs"][4]["status"] == "RUN_STATUS_COMPLETED"
    assert "next_page_token" not in listed

    by_workflow = (await http.get("/api/runs", params={"workflow": "orders"})).json()
    assert [r["run_id"] for r in by_workflow["runs"]] == ["r4", "r2", "r0"]
    # Status words, enum names and comma lists are all accepted.
    for query in ("completed", "RUN_STATUS_COMPLETED", "failed,completed"):
        done = (await http.get("/api/runs", params={"status": query})).json()
        assert [r["run_id"] for r in done["runs"]] == ["r0"], query
    queued = (await http.get("/api/runs?status=queued&status=running")).json()
    assert [r["run_id"] for r in queued["runs"]] == ["r4", "r3", "r2", "r1"]

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await http.get("/api/runs", params={"created_after": future})).json() == {}
    before = (await http.get("/api/runs", params={"created_before": future})).json()
    assert len(before["runs"]) == 5

    seen: list[str] = []
    token = ""
    while True:
        params = {"page_size": "2", **({"page_token": token} if token else {})}
        page = (await http.get("/api/runs", params=params)).json()
        seen += [r["run_id"] for r in page["runs"]]
        token = page.get("next_page_token", "")
        if not token:
            break
    assert seen == ["r4", "r3", "r2", "r1", "r0"]


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"status": "bogus"}, "status", "unknown run status 'bogus'"),
        ({"created_after": "yesterday"}, "created_after", "ISO 8601"),
        ({"created_before": "2025-01-01T00:00:00"}, "created_before", "time zone"),
        ({"page_size": "many"}, "page_size", "must be an integer"),
        ({"page_size": "-1"}, "page_size", "between 0 and"),
        ({"page_token": "forged"}, "page_token", "not a valid page token"),
        ({"workflow": " "}, "filter.workflow_name", "non-empty"),
    ],
)
async def test_bad_list_parameters_are_400_naming_the_field(
    http: httpx.AsyncClient, params: dict[str, str], field: str, words: str
) -> None:
    response = await http.get("/api/runs", params=params)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert words in error["message"]


# -- GetRun, GetEvents, logs -------------------------------------------------------------


async def test_a_run_is_its_snapshot_in_proto_json(http: httpx.AsyncClient, api: Any) -> None:
    await start(api, "r1", workflow="orders")
    await append(
        api,
        ev("r1", "step_started", 2, step_id="charge", attempt=1),
        ev("r1", "run_completed", 3, result=json_payload({"total": 3})),
    )
    run = (await http.get("/api/run", params={"run_id": "r1"})).json()["run"]
    assert run["run_id"] == "r1"
    assert run["workflow_name"] == "orders"
    assert run["status"] == "RUN_STATUS_COMPLETED"
    assert run["last_seq"] == "3"  # int64 travels as a string in proto3 JSON
    assert run["steps"]["charge"]["status"] == "STEP_STATUS_RUNNING"
    assert json.loads(base64.b64decode(run["result"]["data"])) == {"total": 3}


async def test_unknown_runs_are_404_and_a_missing_id_is_400(http: httpx.AsyncClient) -> None:
    for path in ("/api/run", "/api/events", "/api/logs", "/api/stream/run", "/api/stream/logs"):
        missing = await http.get(path, params={"run_id": "ghost"})
        assert missing.status_code == 404, path
        assert error_of(missing) == {"code": "NOT_FOUND", "message": "run 'ghost' not found"}
        no_id = await http.get(path)
        assert no_id.status_code == 400, path
        assert error_of(no_id)["field"] == "run_id"


async def test_events_page_after_a_seq(http: httpx.AsyncClient, api: Any) -> None:
    await start(api, "r1")
    await append(api, *(ev("r1", "log_appended", i, lines=[f"line {i}"]) for i in range(2, 7)))
    first = (await http.get("/api/events", params={"run_id": "r1", "page_size": 2})).json()
    assert [e["seq"] for e in first["events"]] == ["1", "2"]
    assert "run_created" in first["events"][0]
    assert first["has_more"] is True
    rest = (await http.get("/api/events", params={"run_id": "r1", "after_seq": 2})).json()
    assert [e["seq"] for e in rest["events"]] == ["3", "4", "5", "6"]
    assert rest["events"][0]["log_appended"]["lines"] == ["line 3"]
    assert "has_more" not in rest  # false: proto3 JSON leaves defaults out
    bad = await http.get("/api/events", params={"run_id": "r1", "after_seq": -1})
    assert (bad.status_code, error_of(bad)["field"]) == (400, "after_seq")


async def test_the_full_log_is_plain_text(http: httpx.AsyncClient, api: Any) -> None:
    await start(api, "r1")
    await append(api, ev("r1", "log_appended", 2, lines=["<b>one</b>", "two"], channel="out"))
    response = await http.get("/api/logs", params={"run_id": "r1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "1\tout\t<b>one</b>\n2\tout\ttwo\n"


# -- CancelRun and SignalRun -------------------------------------------------------------


async def test_cancel_and_signal_go_through_the_api(
    http: httpx.AsyncClient, api: Any, coordinator: Coordinator
) -> None:
    await start(api, "r1")
    sent = await http.post(
        "/api/signal",
        json={"run_id": "r1", "signal_name": "approve", "payload": {"ok": True}, "request_id": "q"},
    )
    assert sent.json() == {"seq": "2"}
    again = await http.post(
        "/api/signal", json={"run_id": "r1", "signal_name": "approve", "request_id": "q"}
    )
    assert again.json() == {"seq": "2", "duplicate": True}
    text = await http.post(
        "/api/signal", json={"run_id": "r1", "signal_name": "n", "payload_text": '{"a": [1]}'}
    )
    assert text.json() == {"seq": "3"}
    cancel = await http.post("/api/cancel", json={"run_id": "r1", "reason": "enough"})
    assert cancel.json() == {"seq": "4"}

    assert coordinator.store is not None
    events, _ = await coordinator.store.get_events("r1", 1, 10)
    signal = events[0].signal_received
    assert (signal.name, json.loads(signal.payload.data)) == ("approve", {"ok": True})
    assert signal.identity == "dashboard"  # who pressed the button, from the auth hook
    assert json.loads(events[1].signal_received.payload.data) == {"a": [1]}
    assert events[2].cancel_requested.reason == "enough"
    assert events[2].cancel_requested.identity == "dashboard"

    await append(api, ev("r1", "run_cancelled", 9))
    late = await http.post("/api/signal", json={"run_id": "r1", "signal_name": "late"})
    assert late.status_code == 409
    error = error_of(late)
    assert error["code"] == "FAILED_PRECONDITION"
    assert "r1" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "words"),
    [
        ("/api/signal", {"run_id": "r1"}, 400, "signal_name", "non-empty"),
        ("/api/signal", {"run_id": "r1", "signal_name": 5}, 400, "signal_name", "must be a string"),
        (
            "/api/signal",
            {"run_id": "r1", "signal_name": "s", "payload_text": "{nope"},
            400,
            "payload",
            "is not valid JSON",
        ),
        (
            "/api/signal",
            {"run_id": "r1", "signal_name": "s", "payload": 1, "payload_text": "1"},
            400,
            "payload",
            "not both",
        ),
        ("/api/signal", {"run_id": "ghost", "signal_name": "s"}, 404, "", "run 'ghost' not found"),
        ("/api/cancel", {"reason": "x"}, 400, "run_id", "non-empty"),
        ("/api/cancel", ["r1"], 400, "body", "must be a JSON object"),
        ("/api/cancel", {"run_id": "r1", "reason": ["x"]}, 400, "reason", "must be a string"),
    ],
)
async def test_bad_actions_are_refused_with_a_message_naming_the_field(
    http: httpx.AsyncClient,
    api: Any,
    path: str,
    body: Any,
    status: int,
    field: str,
    words: str,
) -> None:
    await start(api, "r1")
    response = await http.post(path, json=body)
    assert response.status_code == status
    error = error_of(response)
    assert error.get("field", "") == field
    assert words in error["message"]
    # Refused means nothing happened.
    events = (await http.get("/api/events", params={"run_id": "r1"})).json()["events"]
    assert [
        next(k for k in e if k not in {"run_id", "seq", "event_time", "source"}) for e in events
    ] == ["run_created"]


async def test_actions_require_a_json_body(http: httpx.AsyncClient, api: Any) -> None:
    # A cross-site form can post urlencoded or text bodies without a preflight; refusing
    # everything but application/json keeps other sites from acting through a browser.
    await start(api, "r1")
    form = await http.post("/api/cancel", data={"run_id": "r1"})
    assert form.status_code == 415
    assert error_of(form)["field"] == "content-type"
    broken = await http.post(
        "/api/cancel", content=b"{", headers={"content-type": "application/json"}
    )
    assert (broken.status_code, error_of(broken)["field"]) == (400, "body")
    snapshot = (await http.get("/api/run", params={"run_id": "r1"})).json()["run"]
    assert "cancel_requested" not in snapshot


# -- live streams ----------------------------------------------------------------------


async def test_the_run_stream_follows_commits_resumes_after_last_event_id_and_ends(
    http: httpx.AsyncClient, api: Any
) -> None:
    await start(api, "r1")
    async with http.stream("GET", "/api/stream/run", params={"run_id": "r1"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        stream = SseReader(response)
        first = await stream.next()
        assert first is not None
        assert stream.retry == 2000
        assert (first.event, first.id, first.json()["status"]) == (
            "snapshot",
            "1",
            "RUN_STATUS_QUEUED",
        )
        await append(api, ev("r1", "run_started", 2))
        second = await stream.next()
        assert second is not None
        assert (second.id, second.json()["status"]) == ("2", "RUN_STATUS_RUNNING")

    # The browser drops the connection; meanwhile the run moves on.
    await append(
        api, ev("r1", "step_started", 3, step_id="a"), ev("r1", "step_completed", 4, step_id="a")
    )
    headers = {"Last-Event-ID": "2"}
    async with http.stream(
        "GET", "/api/stream/run", params={"run_id": "r1"}, headers=headers
    ) as response:
        stream = SseReader(response)
        resumed = await stream.next()
        assert resumed is not None
        # Only the newest state after seq 2: the two commits in between are one snapshot.
        assert resumed.id == "4"
        assert resumed.json()["steps"]["a"]["status"] == "STEP_STATUS_COMPLETED"
        await append(api, ev("r1", "run_completed", 5))
        last = await stream.next()
        assert last is not None
        assert (last.id, last.json()["status"]) == ("5", "RUN_STATUS_COMPLETED")
        end = await stream.next()
        assert end is not None
        assert end.event == "end"
        assert await stream.next() is None

    # Resuming a finished run at its last seq sends nothing but "end": the browser stops.
    async with http.stream(
        "GET", "/api/stream/run", params={"run_id": "r1"}, headers={"Last-Event-ID": "5"}
    ) as response:
        stream = SseReader(response)
        only = await stream.next()
        assert only is not None
        assert only.event == "end"
        assert await stream.next() is None


async def test_bad_stream_positions_are_400(http: httpx.AsyncClient, api: Any) -> None:
    await start(api, "r1")
    for path, headers, params, field in [
        ("/api/stream/run", {"Last-Event-ID": "abc"}, {}, "Last-Event-ID"),
        ("/api/stream/logs", {"Last-Event-ID": "-3"}, {}, "Last-Event-ID"),
        ("/api/stream/run", {}, {"after_seq": "-1"}, "after_seq"),
        ("/api/stream/logs", {}, {"from_seq": "x"}, "from_seq"),
    ]:
        response = await http.get(path, params={"run_id": "r1", **params}, headers=headers)
        assert response.status_code == 400, (path, headers, params)
        assert error_of(response)["field"] == field


async def test_the_log_stream_follows_and_resumes_after_the_last_line_seq(
    http: httpx.AsyncClient, api: Any
) -> None:
    await start(api, "r1")
    await append(api, ev("r1", "log_appended", 2, lines=["a", "b"], channel="out"))
    async with http.stream("GET", "/api/stream/logs", params={"run_id": "r1"}) as response:
        stream = SseReader(response)
        first = await stream.next()
        assert first is not None
        assert first.event == "logs"
        assert first.id == "2"
        assert [(line["seq"], line["text"]) for line in first.json()] == [("1", "a"), ("2", "b")]
        await append(api, ev("r1", "log_appended", 3, lines=["c"], channel="out"))
        follow = await stream.next()
        assert follow is not None
        assert (follow.id, [line["text"] for line in follow.json()]) == ("3", ["c"])

    await append(api, ev("r1", "log_appended", 4, lines=["d", "e"], channel="out"))
    await append(api, ev("r1", "run_completed", 5))
    async with http.stream(
        "GET", "/api/stream/logs", params={"run_id": "r1"}, headers={"Last-Event-ID": "3"}
    ) as response:
        stream = SseReader(response)
        resumed = await stream.next()
        assert resumed is not None
        assert [line["text"] for line in resumed.json()] == ["d", "e"]
        end = await stream.next()
        assert end is not None
        assert end.event == "end"
        assert await stream.next() is None


async def test_the_runs_stream_sends_changes_matching_its_filter(
    http: httpx.AsyncClient, api: Any
) -> None:
    async with http.stream("GET", "/api/stream/runs", params={"workflow": "orders"}) as response:
        stream = SseReader(response)
        await start(api, "skipped", workflow="billing")
        await start(api, "o1", workflow="orders")
        got = await stream.next()
        assert got is not None
        assert got.event == "run"
        assert got.id is None  # a list has no resume position: pages reload on reconnect
        assert (got.json()["run_id"], got.json()["status"]) == ("o1", "RUN_STATUS_QUEUED")
        await append(api, ev("o1", "run_failed", 3, error={"message": "<b>boom</b>"}))
        changed = await stream.next()
        assert changed is not None
        assert changed.json()["error_message"] == "<b>boom</b>"
    bad = await http.get("/api/stream/runs", params={"status": "nope"})
    assert (bad.status_code, error_of(bad)["field"]) == (400, "status")

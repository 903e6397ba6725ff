"""The dashboard in a real browser against a real coordinator and a real worker.

Headless Chromium (Debian's ``chromium`` package, which scripts/test.sh installs) is
driven by Playwright through ``executable_path``; Playwright's own browser download is
never used. ``ledgerflow server --http-listen`` and ``ledgerflow worker`` run as
subprocesses serving ``tests/web/web_app.py``. Every wait is on something the page
shows (Playwright's ``expect`` retries until it holds); the timeouts only stop a hung
test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserType, Dialog, Page, expect, sync_playwright

from ledgerflow.client import SyncClient
from ledgerflow.coordinator.api._auth import hash_token, new_token
from tests.e2e.test_workflows import BIN, free_port, server
from tests.web.web_app import HOSTILE_LOG, HOSTILE_STEP

CHROMIUM = Path(os.environ.get("LEDGERFLOW_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APP = Path(__file__).with_name("web_app.py")
WAIT_MS = 30_000  # only stops a hung test; every wait ends as soon as the page shows it

expect.set_options(timeout=WAIT_MS)


@dataclass
class Stack:
    address: str
    url: str
    app_dir: Path
    client: SyncClient

    def marks(self, name: str) -> Path:
        """A fresh directory for one run's marker and gate files."""
        path = self.app_dir / name
        path.mkdir()
        return path


def launch(chromium: BrowserType) -> Browser:
    """Launch Debian's chromium; fail (never skip) without it: scripts/test.sh installs it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: scripts/test.sh installs Debian's chromium")
    return chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    app_dir = tmp_path_factory.mktemp("web")
    shutil.copy(APP, app_dir / "web_app.py")
    port, http_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    database = f"sqlite+aiosqlite:///{app_dir / 'ledgerflow.db'}"
    with server(database, port, "--http-listen", f"127.0.0.1:{http_port}"):
        worker = subprocess.Popen(
            [str(BIN), "worker", "web_app", "--address", address],
            cwd=app_dir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        client = SyncClient.connect(address)
        try:
            yield Stack(address, f"http://127.0.0.1:{http_port}", app_dir, client)
        finally:
            client.close()
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch(playwright.chromium)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert dialogs == [], "a page opened a dialog"
    assert errors == [], "the page's scripts threw"


def run_url(stack: Stack, run_id: str) -> str:
    return run_url_for(stack.url, run_id)


def run_url_for(base: str, run_id: str) -> str:
    from urllib.parse import quote

    return f"{base}/run?run_id={quote(run_id, safe='')}"


def test_runs_and_run_pages_follow_a_run_live_to_completion(
    stack: Stack, browser: Browser, page: Page
) -> None:
    runs_page = page
    runs_page.goto(stack.url + "/")
    expect(runs_page.locator("#live")).to_have_text("live")
    marks = stack.marks("live")

    # The run starts after the page loaded: its row can only arrive over the live stream.
    stack.client.start("web.live", str(marks), run_id="live-1")
    row = runs_page.locator('tr[data-run-id="live-1"]')
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_have_text("web.live")
    expect(row).to_have_attribute("data-status", "running")

    run_page = browser.new_page()
    run_page.goto(run_url(stack, "live-1"))
    expect(run_page.locator("#run-id")).to_have_text("live-1")
    expect(run_page.locator("#facts .badge")).to_have_text("running")
    expect(run_page.locator('.step[data-step-id="prepare"]')).to_have_attribute(
        "data-status", "completed"
    )
    gated = run_page.locator('.step[data-step-id="wait-for-gate"]')
    expect(gated).to_have_attribute("data-status", "running")
    expect(run_page.locator('.step[data-step-id="batch"] progress')).to_have_attribute("value", "1")
    expect(run_page.locator('.step[data-step-id="batch"]')).to_contain_text("1/2 — half way")
    expect(run_page.locator("#checkpoints")).to_contain_text("inputs checked")
    expect(run_page.locator("#logs")).to_contain_text("preparing")
    expect(run_page.locator("#input")).to_contain_text(str(marks))
    expect(run_page.locator("#result")).to_have_text("Not finished.")

    # Both pages are open and live; the run finishes without either being reloaded.
    (marks / "gate").touch()
    expect(run_page.locator("#facts .badge")).to_have_text("completed")
    expect(gated).to_have_attribute("data-status", "completed")
    expect(run_page.locator('.step[data-step-id="batch"] progress')).to_have_attribute("value", "2")
    expect(run_page.locator("#result")).to_contain_text('"answer": 42')
    expect(run_page.locator("#logs")).to_contain_text("finished")
    expect(run_page.locator('#events tr[data-type="run_completed"]')).to_have_count(1)
    expect(run_page.locator('#events tr[data-type="run_created"] td').first).to_have_text("1")
    expect(run_page.locator("#live")).to_have_text("run completed")
    expect(row).to_have_attribute("data-status", "completed")

    # The full log is one link away, as text.
    run_page.locator("#full-logs").click()
    expect(run_page).to_have_url(re.compile(r"/api/logs\?run_id=live-1$"))
    expect(run_page.locator("body")).to_contain_text("workflow\t[info] preparing")
    run_page.close()


def test_cancel_from_the_run_page_reaches_the_run(stack: Stack, page: Page) -> None:
    marks = stack.marks("cancel")
    stack.client.start("web.cancellable", str(marks), run_id="cancel-1")
    page.goto(run_url(stack, "cancel-1"))
    expect(page.locator('.step[data-step-id="blocked"]')).to_have_attribute(
        "data-status", "running"
    )
    page.fill("#cancel-reason", "changed my mind")
    page.click("#cancel-button")
    expect(page.locator("#action-message")).to_contain_text("Cancellation requested (seq ")
    expect(page.locator("#cancel-requested")).to_have_text("requested: changed my mind")
    expect(page.locator('#events tr[data-type="cancel_requested"]')).to_have_count(1)

    # The blocked step finishes (a thread cannot be interrupted); the body is cancelled at
    # its next step and the booked step is compensated.
    (marks / "gate").touch()
    expect(page.locator("#facts .badge")).to_have_text("cancelled")
    expect(page.locator("#compensation")).to_contain_text("book")
    expect(page.locator("#compensation .badge").first).to_have_text(
        re.compile("compensated|completed")
    )
    assert not (marks / "last").exists()


def test_signals_are_sent_and_refusals_are_shown(stack: Stack, page: Page) -> None:
    marks = stack.marks("signal")
    stack.client.start("web.live", str(marks), run_id="signal-1")
    page.goto(run_url(stack, "signal-1"))
    expect(page.locator('.step[data-step-id="wait-for-gate"]')).to_have_attribute(
        "data-status", "running"
    )
    message = page.locator("#action-message")

    page.fill("#signal-name", "approve")
    page.fill("#signal-payload", '{"approved": true, "by": "<i>ops</i>"}')
    page.click("#signal-button")
    expect(message).to_contain_text("Signal sent (seq ")
    signal_row = page.locator('#events tr[data-type="signal_received"]')
    expect(signal_row).to_have_count(1)
    expect(signal_row).to_contain_text("approve")

    # The API checks the payload and its refusal is shown as it words it.
    page.fill("#signal-payload", "{not json")
    page.click("#signal-button")
    expect(message).to_contain_text("INVALID_ARGUMENT: payload: is not valid JSON")
    expect(signal_row).to_have_count(1)

    (marks / "gate").touch()
    expect(page.locator("#facts .badge")).to_have_text("completed")
    page.fill("#signal-payload", "")
    page.click("#signal-button")
    expect(message).to_contain_text("FAILED_PRECONDITION: ")
    expect(message).to_contain_text("signal-1")


def test_hostile_names_logs_and_ids_render_as_text(stack: Stack, page: Page) -> None:
    marks = stack.marks("hostile")
    run_id = 'xss-<img src=x onerror="window.__pwned=3">&amp;/?#'
    stack.client.start("web.hostile", str(marks), run_id=run_id)
    stack.client.get_handle(run_id).result(timeout=60)

    page.goto(stack.url + "/")
    row = page.locator("tr", has_text="xss-<img")
    expect(row.locator("a")).to_have_text(run_id)
    row.locator("a").click()

    expect(page.locator("#run-id")).to_have_text(run_id)
    expect(page.locator("#facts .badge")).to_have_text("completed")
    expect(page.locator(".step .name")).to_have_text(HOSTILE_STEP)
    expect(page.locator("#logs .line .text").first).to_have_text(f"[info] {HOSTILE_LOG}")
    expect(page.locator("#result")).to_contain_text("<script>window.__pwned=2</script>")
    expect(page.locator('#events tr[data-type="run_completed"]')).to_have_count(1)
    # Parsed as HTML these would have become elements (and, but for the CSP, run).
    assert page.locator("main img, main script, main b").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_the_runs_page_filters_and_pages(stack: Stack, page: Page) -> None:
    # No worker serves this workflow: its runs stay queued, which is all a list needs.
    for i in range(12):
        stack.client.start("web.unserved", run_id=f"unserved-{i:02d}")
    page.goto(stack.url + "/")
    page.fill("#f-workflow", "web.unserved")
    page.select_option("#f-size", "10")
    page.click("#apply")
    rows = page.locator("#rows tr")
    expect(rows).to_have_count(10)
    expect(rows.first).to_have_attribute("data-run-id", "unserved-11")
    expect(page).to_have_url(re.compile(r"workflow=web\.unserved"))

    page.click("#older")
    expect(rows).to_have_count(2)
    expect(rows.last).to_have_attribute("data-run-id", "unserved-00")
    expect(page.locator("#older")).to_be_disabled()
    page.click("#newer")
    expect(rows).to_have_count(10)

    page.check('input[name="status"][value="completed"]')
    page.click("#apply")
    expect(page.locator("#empty")).to_be_visible()
    expect(rows).to_have_count(0)

    # A filter the API refuses shows its message.
    page.goto(stack.url + "/?workflow=%20")
    expect(page.locator("#message")).to_contain_text("INVALID_ARGUMENT: filter.workflow_name")


@dataclass
class SecuredStack:
    url: str
    client: SyncClient
    client_token: str
    worker_token: str


@pytest.fixture(scope="module")
def secured_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredStack]:
    """``ledgerflow server --auth-tokens --http-listen``; no worker: its runs stay queued."""
    app_dir = tmp_path_factory.mktemp("web-auth")
    client_token, worker_token = new_token(), new_token()
    tokens = app_dir / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "app"\nsha256 = "{hash_token(client_token)}"\nscopes = ["client"]\n'
        f'[[tokens]]\nname = "ci-worker"\nsha256 = "{hash_token(worker_token)}"\n'
        'scopes = ["worker"]\n'
    )
    port, http_port = free_port(), free_port()
    database = f"sqlite+aiosqlite:///{app_dir / 'ledgerflow.db'}"
    extra = ["--http-listen", f"127.0.0.1:{http_port}", "--auth-tokens", str(tokens)]
    with server(database, port, *extra):
        client = SyncClient.connect(f"127.0.0.1:{port}", token=client_token)
        try:
            yield SecuredStack(f"http://127.0.0.1:{http_port}", client, client_token, worker_token)
        finally:
            client.close()


def test_signing_in_with_a_token_shows_the_runs_live_and_signing_out_hides_them(
    secured_stack: SecuredStack, page: Page
) -> None:
    stack = secured_stack
    stack.client.start("web.unserved", run_id="secret-1")
    page.goto(stack.url + "/")
    form = page.locator("#sign-in")
    expect(form).to_be_visible()
    expect(page.locator("table.runs")).to_be_hidden()
    message = page.locator("#sign-in-message")

    page.fill("#sign-in-token", "lf_not-a-token")
    page.click("#sign-in-button")
    expect(message).to_have_text("UNAUTHENTICATED: unknown token")
    page.fill("#sign-in-token", stack.worker_token)
    page.click("#sign-in-button")
    expect(message).to_contain_text("PERMISSION_DENIED: token 'ci-worker' lacks the 'client'")

    page.fill("#sign-in-token", stack.client_token)
    page.click("#sign-in-button")
    expect(page.locator('tr[data-run-id="secret-1"]')).to_be_visible()
    expect(form).to_have_count(0)
    expect(page.locator("#who")).to_have_text("app")
    # The runs stream is an EventSource: it can only have opened with the cookie.
    expect(page.locator("#live")).to_have_text("live")
    stack.client.start("web.unserved", run_id="secret-2")
    expect(page.locator('tr[data-run-id="secret-2"]')).to_be_visible()
    assert page.evaluate("document.cookie") == ""  # HttpOnly: page scripts cannot read it
    assert stack.client_token not in page.content()

    # An action records the token's name as who pressed the button.
    page.goto(run_url_for(stack.url, "secret-1"))
    expect(page.locator("#run-id")).to_have_text("secret-1")
    page.fill("#cancel-reason", "from the dashboard")
    page.click("#cancel-button")
    expect(page.locator("#action-message")).to_contain_text("Cancellation requested (seq ")
    events = stack.client.get_events("secret-1").events
    assert [e.cancel_requested.identity for e in events if e.HasField("cancel_requested")] == [
        "app"
    ]

    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#who")).to_have_count(0)
    page.goto(stack.url + "/")
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#rows tr")).to_have_count(0)

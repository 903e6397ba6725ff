"""Take the dashboard screenshots in docs/: `python scripts/screenshots.py`.

Starts a real coordinator (`ledgerflow server --http-listen`, SQLite in a temporary
directory) and a real worker serving tests/web/web_app.py, runs a few workflows to
their ends (completed, failed with compensation, cancelled), leaves one in flight, and
photographs the runs page and that run's page with Debian's headless chromium.

Environment: LEDGERFLOW_CHROMIUM (default /usr/bin/chromium).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import expect, sync_playwright

from ledgerflow.client import SyncClient
from ledgerflow.errors import RunEndedError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "ledgerflow"
CHROMIUM = os.environ.get("LEDGERFLOW_CHROMIUM", "/usr/bin/chromium")
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ledgerflow-shots-"))
    shutil.copy(ROOT / "tests" / "web" / "web_app.py", work / "web_app.py")
    port, http_port = free_port(), free_port()
    address, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    database = f"sqlite+aiosqlite:///{work / 'ledgerflow.db'}"
    coordinator = subprocess.Popen(
        [
            str(BIN),
            "server",
            "--listen",
            address,
            "--http-listen",
            f"127.0.0.1:{http_port}",
            "--database-url",
            database,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    worker = None
    try:
        assert coordinator.stdout is not None
        for line in coordinator.stdout:
            if "dashboard on" in line:
                break
        worker = subprocess.Popen(
            [str(BIN), "worker", "web_app", "--address", address],
            cwd=work,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        with SyncClient.connect(address) as client:
            take(client, work, url)
    finally:
        for proc in (worker, coordinator):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def gate(work: Path, name: str) -> Path:
    path = work / name
    path.mkdir()
    return path


def take(client: SyncClient, work: Path, url: str) -> None:
    for i in range(1, 4):
        marks = gate(work, f"done-{i}")
        (marks / "gate").touch()
        client.start("web.live", str(marks), run_id=f"order-100{i}").result(timeout=60)
    failed = client.start("web.failing", str(gate(work, "failing")), run_id="payment-2001")
    cancelled_marks = gate(work, "cancelled")
    cancelled = client.start("web.cancellable", str(cancelled_marks), run_id="booking-3001")
    cancelled.cancel("customer changed their mind")
    (cancelled_marks / "gate").touch()
    for handle in (failed, cancelled):
        with contextlib.suppress(RunEndedError):
            handle.result(timeout=60)
    live_marks = gate(work, "live")
    client.start("web.live", str(live_marks), run_id="order-1004")

    docs = ROOT / "docs"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(url + "/")
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#rows tr")).to_have_count(6)
        expect(page.locator('tr[data-run-id="order-1004"]')).to_have_attribute(
            "data-status", "running"
        )
        page.screenshot(path=docs / "dashboard-runs.png")

        page.set_viewport_size({"width": 1280, "height": 1400})
        page.goto(f"{url}/run?run_id={quote('order-1004')}")
        expect(page.locator('.step[data-step-id="wait-for-gate"]')).to_have_attribute(
            "data-status", "running"
        )
        expect(page.locator("#logs")).to_contain_text("preparing")
        expect(page.locator("#live")).to_have_text("live")
        page.screenshot(path=docs / "dashboard-run.png")
        browser.close()
    (live_marks / "gate").touch()
    print(f"wrote {docs / 'dashboard-runs.png'} and {docs / 'dashboard-run.png'}")


if __name__ == "__main__":
    sys.exit(main())

"""The dashboard in headless Chromium (Playwright, the system's /usr/bin/chromium): it loads with no
console errors, its numbers move under load, it asks nothing of any origin but the server's own,
and a screenshot is kept (in the test's tmp folder, and in $INFERLANE_TEST_ARTIFACTS when set)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright

from inferlane.store.lanes import report_lane
from inferlane.testing.waiting import wait_until
from tests.conftest import Server
from tests.dashboard.conftest import infer

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Load:
    """Requests to the server from a thread until stopped (the page is driven from the test's thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                assert infer(client, self.url).status_code == 200
                self.sent += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _text(page: Page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def test_the_page_loads_updates_under_load_and_needs_no_network(browser: Browser, dash_server: Server,
                                                                dash_state: Path, tmp_path: Path) -> None:
    origin = dash_server.url
    elsewhere: list[str] = []
    problems: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(origin + "/"):
            route.continue_()
        else:  # blocked, as with no network access; and remembered: the page must not try
            elsewhere.append(route.request.url)
            route.abort()

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            problems.append(f"console {msg.type}: {msg.text}")

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.route("**/*", only_the_server)
    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(f"{origin}/dashboard")
    wait_until(lambda: _text(page, "#ready") == "ready", "the page shows the server ready", timeout_s=15)
    row = page.locator("#versions tbody tr", has_text="quick")
    wait_until(lambda: row.count() == 1, "the model's row shows", timeout_s=10)
    first_total = int(_text(page, "#total-requests"))

    with Load(origin) as load:
        wait_until(lambda: load.sent >= 20 and int(_text(page, "#total-requests")) >= first_total + 20,
                   "the request count on the page grows", timeout_s=20)
        wait_until(lambda: (_number(row.locator("[data-field=rps]").inner_text()) or 0) > 0,
                   "the page shows a request rate", timeout_s=20)
        wait_until(lambda: _number(row.locator("[data-field=p99]").inner_text()) is not None,
                   "the page shows a p99", timeout_s=20)
        rps_text = row.locator("[data-field=rps]").inner_text()
        wait_until(lambda: row.locator("[data-field=rps]").inner_text() != rps_text,
                   "the displayed rate changes from one update to the next", timeout_s=20)
    assert float(row.locator("[data-field=forward]").inner_text().split(" / ")[0]) >= 1.5  # 2 ms model
    assert row.locator(".bars i").count() >= 1  # the batch size distribution is drawn

    lanes = dash_state / "lanes.db"
    with report_lane("stream", "browser-g", lambda: {"model": "quick", "version": "1", "in": 12,
                                                     "lag": {"0": 3, "1": 4}}, lanes), \
            report_lane("batch", "browser-job", lambda: {"model": "quick", "version": "1", "rows_planned": 200,
                                                         "rows_done": 50}, lanes):
        stream_row = page.locator("#streams tbody tr", has_text="browser-g")
        wait_until(lambda: stream_row.count() == 1, "the stream lane's row shows", timeout_s=10)
        assert stream_row.locator("[data-field=lag]").inner_text() == "0: 3, 1: 4"
        assert stream_row.locator("[data-field=total_lag]").inner_text() == "7"
        batch_row = page.locator("#batches tbody tr", has_text="browser-job")
        wait_until(lambda: batch_row.count() == 1, "the batch job's row shows", timeout_s=10)
        assert "25.0%" in batch_row.inner_text()

    # the advisor, on the forward times this traffic measured: the form's defaults (inputs known ahead,
    # an hour of freshness) give hybrid, with a cost per pattern
    page.select_option("#advisor-model", "quick")
    page.click("#advisor button")
    wait_until(lambda: page.locator("#advice").is_visible(), "the advice shows", timeout_s=15)
    assert _text(page, "#advice-pattern") == "hybrid"
    assert page.locator("#advice-costs tbody tr").count() == 5
    assert page.locator("#advice-costs td.chosen").inner_text() == "hybrid"
    assert page.locator("#advice-migration li").count() >= 1
    assert problems == []
    page.fill("#advisor [name=peak_rps]", "-3")
    page.click("#advisor button")
    wait_until(lambda: page.locator("#advice-error").is_visible(), "a bad field is reported", timeout_s=15)
    assert "peak-rps" in _text(page, "#advice-error") or "peak_rps" in _text(page, "#advice-error")
    # the browser logs the refused request itself (a 400 answer): that one line is expected, nothing else
    assert [p for p in problems if "status of 400" not in p] == [] and len(problems) == 1
    problems.clear()

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    artifacts = os.environ.get("INFERLANE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "dashboard.png")
    page.close()
    assert elsewhere == [], f"the page asked for other origins: {elsewhere}"
    assert problems == []

"""cnnbench report in a real browser: headless Chromium opens it from file:// and draws every chart, offline.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium``; skips with the
reason when one is missing. Set ``CNNBENCH_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import resultgen
from cnnbench.html import write_report
from cnnbench.results import RunResult
from test_html_report import HOSTILE, store_runs, with_accuracy

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)), None
)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver (apt-get install chromium-driver)"),
]

#: Flags that keep Chromium from reaching out by itself (updates, sync, field trials, QUIC probes).
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
)  # fmt: skip
RENDER_TIMEOUT_S = 60.0


def report_runs() -> list[RunResult]:
    """Three runs of torch, jax and a failing tf; the newest adds a framework whose name tries to inject."""
    runs = store_runs()
    evil = with_accuracy(
        dataclasses.replace(resultgen.backend("torch", [1500.0, 1550.0, 1450.0]), backend=f"evil{HOSTILE}")
    )
    runs[-1] = dataclasses.replace(runs[-1], backends=(*runs[-1].backends, evil))
    return runs


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RunResult]]:
    runs = report_runs()
    return write_report(runs, tmp_path_factory.mktemp("report")), runs


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_report(driver: Any, path: Path, width: int = 1280, height: int = 1000) -> None:
    """Load the report with the logs emptied first, so they hold only what this page did."""
    driver.set_window_size(width, height)
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(path.as_uri())


def wait_for_charts(driver: Any, selector: str = ".chart") -> list[str]:
    """Wait until every chart under ``selector`` is drawn or failed; their states."""
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    states: list[str] = []
    while time.monotonic() < deadline:
        states = driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.getAttribute('data-state') || '')",
            selector,
        )
        if states and all(s in ("rendered", "error") for s in states):
            break
        time.sleep(0.2)
    return states


def save_screenshot(driver: Any, path: Path) -> Path:
    driver.save_screenshot(str(path))
    keep = os.environ.get("CNNBENCH_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def requested_urls(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_report_renders_every_chart_offline_without_console_errors(browser, report, tmp_path):
    path, runs = report
    open_report(browser, path)
    browser.execute_script("document.querySelectorAll('details.run').forEach(d => { d.open = true; })")
    states = wait_for_charts(browser)
    assert states and all(s == "rendered" for s in states), states
    drawn = browser.execute_script(
        """return Array.from(document.querySelectorAll('.chart')).map(e => {
             const svg = e.querySelector('svg');
             if (!svg) return null;
             const box = svg.getBoundingClientRect();
             return {w: box.width, h: box.height, marks: svg.querySelectorAll('g.mark-symbol path, g.mark-line path,'
               + ' g.mark-rect path, g.mark-rule line, g.mark-area path, g.mark-tick rect').length};
           })"""
    )
    assert all(d and d["w"] > 100 and d["h"] > 40 and d["marks"] > 0 for d in drawn), drawn
    assert len(drawn) == 3 * 6 + 1 + 5  # six per run, the comparison, five history metrics
    # the run table: one row per framework, in every run
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('details.run table.results')).map(t => t.tBodies[0].rows.length)"
    )
    assert rows == [len(run.backends) for run in sorted(runs, key=lambda r: r.created, reverse=True)]
    # the hostile framework name is text, not markup
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    names = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.results td:first-child')).map(c => c.textContent)"
    )
    assert f"evil{HOSTILE}" in names
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" or e.get("source") == "console-api"]
    assert not problems, problems
    urls = requested_urls(browser)
    assert urls and all(u.split(":", 1)[0] in ("file", "data", "about", "blob") for u in urls), urls
    assert {u for u in urls if u.startswith("file:")} == {path.as_uri()}, "only the report itself may be read"
    shot = save_screenshot(browser, tmp_path / "report-1280.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_run_table_sorts_by_a_column(browser, report):
    path, _ = report
    open_report(browser, path)
    wait_for_charts(browser, "details.run[open] .chart")
    table = "details.run[open] table.results"
    headers = browser.execute_script(
        f"return Array.from(document.querySelectorAll('{table} th')).map(h => h.textContent)"
    )
    column = headers.index("train samples/s")
    button = browser.find_elements("css selector", f"{table} th button")[column]

    def values() -> list[float | None]:
        cells = browser.execute_script(
            f"return Array.from(document.querySelector('{table}').tBodies[0].rows)"
            f".map(r => r.cells[{column}].getAttribute('data-sort'))"
        )
        return [float(c) if c else None for c in cells]

    button.click()
    ascending = values()
    numbers = [v for v in ascending if v is not None]
    assert numbers == sorted(numbers) and len(numbers) >= 3 and ascending[-1] is None  # no value sorts last
    assert (
        browser.execute_script(f"return document.querySelectorAll('{table} th')[{column}].getAttribute('aria-sort')")
        == "ascending"
    )
    button.click()
    descending = [v for v in values() if v is not None]
    assert descending == sorted(numbers, reverse=True)


def test_history_hover_shows_commit_date_value_and_spread(browser, report):
    from selenium.webdriver.common.action_chains import ActionChains

    path, _ = report
    open_report(browser, path)
    assert all(s == "rendered" for s in wait_for_charts(browser, "#history .chart"))
    chart = browser.find_element("css selector", "#history .chart")  # train throughput
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)

    def hover(element: Any) -> str:
        ActionChains(browser).move_to_element(element).perform()
        deadline = time.monotonic() + 10
        tooltip = ""
        while time.monotonic() < deadline and "commit" not in tooltip:
            tooltip = browser.execute_script(
                "const t = document.getElementById('vg-tooltip-element'); return t ? t.textContent : ''"
            )
            time.sleep(0.1)
        return str(tooltip)

    first = hover(chart.find_element("css selector", "g.mark-symbol.role-mark path"))  # torch in the oldest run
    assert "commitc0ffee1" in first and "date2025-01-01 12:00" in first and "median ± half IQR)2,000 ± 20" in first, (
        first
    )
    marker = browser.execute_script(  # the last layer of symbols: the regression markers of the newest run
        "return Array.from(arguments[0].querySelectorAll('g.mark-symbol.role-mark')).pop().querySelector('path')", chart
    )
    flagged = hover(marker)
    assert "regression-42.9% vs 20250102T120000Z" in flagged and "commitc0ffee3" in flagged, flagged


def test_readable_at_phone_width(browser, report, tmp_path):
    path, _ = report
    open_report(browser, path, width=390, height=844)
    states = wait_for_charts(browser, "details.run[open] .chart, #compare .chart, #history .chart")
    assert states and all(s == "rendered" for s in states), states
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than a phone screen"
    too_wide = browser.execute_script(
        """return Array.from(document.querySelectorAll('.chart svg'))
             .filter(s => s.getBoundingClientRect().width > s.closest('.chart').clientWidth + 1).length"""
    )
    assert too_wide == 0
    save_screenshot(browser, tmp_path / "report-phone.png")

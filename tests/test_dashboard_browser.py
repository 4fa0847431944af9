"""The live dashboard in a real headless Chromium (selenium): the page follows a run with
two `loadagent start` agents to its final figures, its Stop button stops a run, and in
the open model it shows the target rate, the late and dropped calls and the service
time and schedule lag.

Needs Debian's chromium and chromium-driver (.ci/run installs them) and selenium (the dev
extra). Screenshots go to $LOADTEST_ARTIFACTS, or tests/artifacts/.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_helpers import (
    ROOT,
    Agents,
    Target,
    free_port,
    tagged_env,
    write_job,
)
from tests.test_dashboard import LIGHT, STOP_NOTE, DashRun, dash_master, get_state
from tests.test_open_model_views import DELAY_MS, OPEN, RATE, RUN_TIME

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMEDRIVER, os.X_OK) and os.access(CHROMIUM, os.X_OK)),
    reason=f"the browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, "
           f"{CHROMEDRIVER}): apt-get install chromium chromium-driver")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="the browser tests need selenium (pip install -e '.[dev]')")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.chrome.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def artifacts_dir() -> Path:
    path = Path(os.environ.get("LOADTEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Page:
    """The dashboard in one browser tab, with the console log kept as it is read."""

    def __init__(self, driver: WebDriver, name: str) -> None:
        self.driver = driver
        self.name = name  # of the screenshots
        self.console: list[dict[str, Any]] = []

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self, element_id: str) -> str:
        """An element's text, read in one step (the page rewrites it every second)."""
        text = self.driver.execute_script(
            "const el = document.getElementById(arguments[0]);"
            "return el === null ? null : el.innerText;", element_id)
        assert isinstance(text, str), f"no element #{element_id}"
        return text.strip()

    def number(self, element_id: str) -> float | None:
        """An element's figure; None while it shows a dash."""
        try:
            return float(self.text(element_id).split()[0])
        except (ValueError, IndexError):
            return None

    def classes(self, element_id: str) -> list[str]:
        names = self.driver.execute_script(
            "return Array.from(document.getElementById(arguments[0]).classList);", element_id)
        assert isinstance(names, list), names
        return [str(n) for n in names]

    def shown(self, element_id: str) -> bool:
        shown: bool = self.driver.find_element(By.ID, element_id).is_displayed()
        return shown

    def column(self, tbody_id: str, index: int = 0) -> list[str]:
        """A table's column, read in one step (the page rebuilds its rows as data change)."""
        cells = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#' + arguments[0] + ' > tr'),"
            " (tr) => tr.cells[arguments[1]].innerText.trim());", tbody_id, index)
        assert isinstance(cells, list), cells
        return [str(c) for c in cells]

    def read_console(self) -> list[dict[str, Any]]:
        # each read drains the browser's buffer: the entries are kept here
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        self.console.extend(entries)
        return self.console

    def severe(self) -> list[dict[str, Any]]:
        return [e for e in self.read_console() if e.get("level") == "SEVERE"]

    def describe(self) -> str:
        try:
            parts = {k: self.text(k) for k in ("phase", "status", "conn", "ok", "users")}
        except WebDriverException as e:
            return f"(page unreadable: {e.msg})"
        return f"page {parts}; console {self.read_console()}"

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"{self.describe()}")
            time.sleep(0.2)

    def screenshot(self, label: str) -> Path:
        path = artifacts_dir() / f"{self.name}-{label}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path


@pytest.fixture
def page(tag: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A headless Chromium; its processes carry the test's tag (so none may outlive it)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1800", "--no-proxy-server", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver's path given: selenium must not try to download one (no internet)
    service = Service(CHROMEDRIVER, env=tagged_env(tag))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    p = Page(driver, request.node.name.replace("/", "_"))
    try:
        yield p
    finally:
        # whatever happened, the page as it was at the end
        with contextlib.suppress(WebDriverException, AssertionError):
            p.screenshot("last")
        driver.quit()


def page_running_with_calls(page: Page) -> bool:
    ok, users = page.number("ok"), page.number("users")
    return page.text("phase") == "running" and ok is not None and ok > 0 \
        and users is not None and users > 0


def test_the_page_follows_a_two_agent_run_to_its_final_figures(
        tmp_path: Path, tag: str, target: Target, page: Page) -> None:
    agents = Agents(tag, free_port(), tmp_path)
    names = ("dash-a0", "dash-a1")
    try:
        for name in names:  # they dial before the master exists
            agents.start(name)
        conf = write_job(tmp_path, {"host": target.url, "agents": 2, "agent_timeout": 30,
                                    "run_time": 12, "users": 4, "hatch_rate": 4,
                                    "wait_time": 0.05})
        keep = 5
        with dash_master(tmp_path, conf, tag, "--bind", f"127.0.0.1:{agents.port}",
                         "--dash-bind", f"127.0.0.1:{free_port()}",
                         "--dash-keep", str(keep)) as run:
            page.open(run.base)  # before the run starts: the page follows every phase
            page.wait(lambda: page_running_with_calls(page), 60,
                      "the page to show the run running with calls")
            assert page.text("conn") == "live"
            first = {k: page.number(k) for k in ("ok", "current-rps", "users")}
            assert first["ok"] is not None
            # the next snapshots: waited for, not slept for
            page.wait(lambda: (page.number("ok") or 0) > (first["ok"] or 0), 15,
                      "the ok count to grow")
            second = {k: page.number(k) for k in ("ok", "current-rps", "users")}
            assert second["ok"] is not None
            assert second["ok"] > first["ok"], (first, second)  # the figures flow
            assert second["current-rps"] is not None and second["current-rps"] > 0
            assert second["users"] == 4, (first, second)
            assert sorted(page.column("agents")) == sorted(names)
            assert page.text("phase") == "running"
            assert not page.shown("final")
            # the closed model: nothing of the open model's
            assert not page.shown("open") and not page.shown("box-open")
            assert page.text("title-latency") == "latency, ms"
            page.screenshot("running")
            assert not page.severe(), page.console

            # the run ends by itself; the master keeps serving the final figures
            page.wait(lambda: page.shown("final"), 12 + 40, "the final figures")
            final_seen = time.monotonic()
            assert run.alive(), "the master should keep serving for --dash-keep"
            assert page.text("phase") == "finished"
            assert page.text("final-exit") == "0"
            assert "success count" in page.text("final-text")
            page_ok = page.number("ok")
            assert get_state(run.base)["phase"] == "finished"  # still served
            page.screenshot("final")
            run.out.wait_for("final figures stay", 10)
            r = run.result(keep + 30)
            kept = time.monotonic() - final_seen
            assert keep - 2 < kept < keep + 10, f"served the final figures {kept:.1f}s"
        assert r.code == 0, r.stderr
        assert page_ok == r.final_int("success count") == target.counts()["ok"] > 0
        assert sorted(page.column("agents")) == sorted(names)
        assert page.text("phase") == "finished"  # the page stays as it was
        assert not page.severe(), page.console
    finally:
        codes = agents.stop_all()
    bad = {name: agents.logs[name].text(1) for name, code in codes.items() if code != 0}
    assert not bad, (codes, bad)


def test_the_stop_button_stops_the_run_gracefully(tmp_path: Path, tag: str, target: Target,
                                                 page: Page) -> None:
    conf = write_job(tmp_path, {"host": target.url, "run_time": 60, **LIGHT})
    run: DashRun
    with dash_master(tmp_path, conf, tag, "--dash-bind", f"127.0.0.1:{free_port()}") as run:
        page.open(run.base + "?noconfirm=1")
        page.wait(lambda: page_running_with_calls(page), 40,
                  "the page to show the run running with calls")
        stop = page.driver.find_element(By.ID, "stop")
        assert stop.is_enabled()
        stop.click()
        clicked = time.monotonic()
        page.wait(lambda: page.text("phase") in ("stopping", "finished"), 15,
                  "the page to show the run stopping")
        assert "stop requested" in page.text("stop-msg")
        assert not stop.is_enabled()
        assert not page.severe(), page.console
        r = run.result(15)
        took = time.monotonic() - clicked
    assert r.code == 130, r.stderr
    assert took < 15
    final = r.stdout[r.stdout.rfind("final benchmark:"):]
    assert "final benchmark:" in final and STOP_NOTE in final, r.stdout
    assert "stop asked from the dashboard" in r.stderr
    assert r.final_int("success count") == target.counts()["ok"] > 0


def test_the_page_shows_the_open_models_schedule_late_and_dropped_calls(
        tmp_path: Path, tag: str, page: Page) -> None:
    # a pool of two clients against a 50 ms target cannot start 100 calls a second
    target = Target(tag, delay_ms=DELAY_MS)
    try:
        conf = write_job(tmp_path, {"host": target.url, **OPEN})
        keep = 5
        with dash_master(tmp_path, conf, tag, "--dash-bind", f"127.0.0.1:{free_port()}",
                         "--dash-keep", str(keep)) as run:
            page.open(run.base)
            page.wait(lambda: page.text("phase") == "running" and page.shown("open")
                      and (page.number("open-late") or 0) > 0
                      and (page.number("open-dropped") or 0) > 0, 40,
                      "the page to show late and dropped calls")
            assert page.text("open-target") == f"{RATE}/s"
            assert "uniform" in page.text("open-arrivals")
            started = page.number("open-started-recent")
            assert started is not None and 0 < started < RATE * 0.6  # behind the target
            assert "warn" in page.classes("open-late") and "bad" in page.classes("open-dropped")
            assert page.text("title-latency") == "response time from the intended start, ms"
            # the target line on the rate chart; the three p99s on their own chart
            page.wait(lambda: "target/s" in page.text("chart-rate"), 10, "the rate chart")
            assert "dropped/s" in page.text("chart-rate")
            assert page.shown("box-open")
            for label in ("response time p99", "service p99", "lag p99"):
                assert label in page.text("chart-open"), label
            # per name: late, dropped, service and lag p99
            assert page.shown("names-table")
            late = page.column("names", 10)
            assert len(late) == 1 and int(late[0]) > 0, late
            service, lag = float(page.column("names", 12)[0]), float(page.column("names", 13)[0])
            assert DELAY_MS <= service < lag, (service, lag)
            page.screenshot("open-running")
            assert not page.severe(), page.console

            page.wait(lambda: page.shown("final"), RUN_TIME + 40, "the final figures")
            shown = {k: page.number(k) for k in ("open-late", "open-dropped", "ok")}
            page.screenshot("open-final")
            r = run.result(keep + 30)
        assert r.code == 0, r.stderr
        final = r.final()
        assert shown == {
            "open-late": int(final["late calls"].split()[0].replace(",", "")),
            "open-dropped": int(final["dropped calls"].split()[0].replace(",", "")),
            "ok": r.final_int("success count")}, (shown, final)
        assert "dropped calls" in page.text("final-text")
        assert not page.severe(), page.console
    finally:
        target.stop()


def test_the_page_shows_each_thresholds_verdict_live_and_at_the_end(
        tmp_path: Path, tag: str, target: Target, page: Page) -> None:
    """One rule no loopback call can meet and one every call meets: the table shows them
    failing and passing while the run goes, then the end's verdicts and exit 6."""
    conf = write_job(tmp_path, {"host": target.url, "run_time": 4, **LIGHT,
                                "thresholds": ["p99 < 1us", {"rule": "fail_ratio < 1%",
                                                             "over": "2s"}]})
    with dash_master(tmp_path, conf, tag, "--dash-bind", f"127.0.0.1:{free_port()}",
                     "--dash-keep", "5") as run:
        page.open(run.base)
        # the rules are there from the start, waiting for their figures
        page.wait(lambda: page.shown("thresholds-section"), 10, "the thresholds")
        assert set(page.column("thresholds")) <= {"waiting", "failing", "passing"}
        page.wait(lambda: page.text("phase") == "running"
                  and page.column("thresholds") == ["failing", "passing"], 40,
                  "the live verdicts")
        assert page.column("thresholds", 1) == ["p99 < 1us", "fail_ratio < 1% over 2s"]
        assert page.text("thresholds-summary") == "1 passing, 1 failing"
        assert "bad" in page.classes("thresholds-summary")
        page.wait(lambda: page.shown("final"), 40, "the final figures")
        assert page.column("thresholds") == ["FAIL", "pass"]
        assert page.text("thresholds-summary") == "1 passed, 1 failed (exit 6)"
        assert page.column("thresholds", 3)[1].startswith("0.00% (seconds "), \
            page.column("thresholds", 3)
        assert page.text("final-exit") == "6"
        page.screenshot("thresholds")
        assert not page.severe(), page.console
        r = run.result(30)
    assert r.code == 6, r.stderr

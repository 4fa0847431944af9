"""The HTML report in a real headless Chromium (selenium), opened from a file with no
network: every chart is drawn, no script fails, the figures are the result file's, and
markup from the run stays text.

Needs Debian's chromium and chromium-driver and selenium, as
tests/test_dashboard_browser.py (whose browser fixture this reuses). Screenshots go to
$LOADTEST_ARTIFACTS, or tests/artifacts/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadmaster.html_report import render_html

# the same skip conditions as the dashboard's browser tests
from tests.test_dashboard_browser import Page, page, pytestmark
from tests.test_html_report import (
    FAIL_ONLY_CHARTS,
    HOSTILE,
    ONE_NAME_CHARTS,
    OPEN_CHARTS,
    fail_only_doc,
    failed_doc,
    http_doc,
    module_tag,
    open_doc,
    shown_ms,
    with_more,
)

# the fixtures imported above, used by name
__all__ = ["fail_only_doc", "failed_doc", "http_doc", "module_tag", "open_doc", "page",
           "pytestmark"]


def wait(page: Page, cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; console "
                                 f"{page.read_console()}")
        time.sleep(0.1)


def open_report(page: Page, doc: dict[str, Any], path: Path) -> None:
    """Write the report of ``doc`` to ``path``, open it, wait for its script to finish."""
    path.write_text(render_html(doc), encoding="utf-8")
    page.open(path.as_uri())
    wait(page, lambda: page.driver.execute_script("return document.body.dataset.charts")
         is not None, 20, "the charts to be drawn")


def charts_drawn(page: Page) -> int:
    return int(page.driver.execute_script("return document.body.dataset.charts"))


def canvas_sizes(page: Page) -> dict[str, list[float]]:
    """Each chart container's canvas: its drawn width and height (none: [])."""
    sizes: dict[str, list[float]] = page.driver.execute_script(
        "const out = {};"
        "for (const el of document.querySelectorAll('.chart')) {"
        "  const c = el.querySelector('.uplot canvas');"
        "  out[el.id] = c === null ? [] : [c.width, c.height, c.getBoundingClientRect().width];"
        "}"
        "return out;")
    return sizes


def assert_no_script_error(page: Page) -> None:
    assert page.text("report-errors") == ""
    assert not page.severe(), page.console


def test_the_report_of_a_run_draws_every_chart_and_shows_the_files_totals(
        tmp_path: Path, page: Page, http_doc: dict[str, Any]) -> None:
    open_report(page, http_doc, tmp_path / "report.html")
    assert charts_drawn(page) == len(ONE_NAME_CHARTS)
    sizes = canvas_sizes(page)
    assert sorted(sizes) == sorted(ONE_NAME_CHARTS)
    for chart, size in sizes.items():
        assert size and min(size) > 0, (chart, size)
    all_ = http_doc["totals"]["all"]
    assert page.text("total-ok") == str(all_["ok"])
    assert page.text("total-fail") == str(all_["fail"])
    assert float(page.text("total-rps")) == pytest.approx(all_["rps"], abs=0.005)
    assert page.text("run-id") == http_doc["run_id"]
    page.screenshot("report")
    assert_no_script_error(page)


def table_rows(page: Page, table_id: str) -> list[dict[str, str]]:
    """A table's body rows by its header, as the browser shows them."""
    rows: list[dict[str, str]] = page.driver.execute_script(
        "const t = document.getElementById(arguments[0]);"
        "const head = Array.from(t.tHead.rows[0].cells, (c) => c.innerText.trim());"
        "return Array.from(t.tBodies[0].rows, (tr) => Object.fromEntries("
        "  Array.from(tr.cells, (c, k) => [head[k], c.innerText.trim()])));", table_id)
    return rows


def test_the_open_models_table_and_chart_show_the_files_figures(
        tmp_path: Path, page: Page, open_doc: dict[str, Any]) -> None:
    open_report(page, open_doc, tmp_path / "open.html")
    assert charts_drawn(page) == len(OPEN_CHARTS)
    sizes = canvas_sizes(page)
    assert sorted(sizes) == sorted(OPEN_CHARTS)
    assert all(min(size or [0]) > 0 for size in sizes.values()), sizes
    legend = page.text("chart-open")
    for label in ("response time p99", "service time p99", "schedule lag p99"):
        assert label in legend
    all_ = open_doc["totals"]["all"]
    sched = all_["open"]
    assert sched["late"] > 0 and sched["dropped"] > 0
    # the table's totals (one name: its row is every name's) are the file's
    (row,) = table_rows(page, "table-open")
    assert (row["scheduled"], row["late"], row["dropped"]) == \
        (str(sched["scheduled"]), str(sched["late"]), str(sched["dropped"]))
    assert int(row["scheduled"]) == all_["ok"] + all_["fail"] + sched["dropped"]
    assert row["p99 ms"] == shown_ms(all_["p99_ns"])
    assert row["service p99 ms"] == shown_ms(sched["service"]["p99_ns"])
    assert row["lag p99 ms"] == shown_ms(sched["lag"]["p99_ns"])
    assert page.text("total-scheduled") == str(sched["scheduled"])
    assert page.text("total-dropped").startswith(str(sched["dropped"]))
    assert "100/s (uniform)" in page.text("schedule")
    page.screenshot("report-open")
    assert_no_script_error(page)


def test_markup_from_the_run_stays_text_in_tables_and_legends(
        tmp_path: Path, page: Page, http_doc: dict[str, Any],
        fail_only_doc: dict[str, Any]) -> None:
    doc = with_more(http_doc, HOSTILE, HOSTILE)
    doc["errors"], doc["custom"] = fail_only_doc["errors"], fail_only_doc["custom"]
    open_report(page, doc, tmp_path / "report.html")
    # a second name adds the per-name chart
    assert charts_drawn(page) == len(ONE_NAME_CHARTS) + 1
    assert all(min(size or [0]) > 0 for size in canvas_sizes(page).values())
    assert page.driver.title == f"load test report: run {doc['run_id']}"  # not 'pwned'
    assert page.driver.execute_script(
        "return document.querySelectorAll('img, main script, header script').length") == 0
    names = page.driver.execute_script(
        "return Array.from(document.querySelectorAll('#table-names tbody tr'),"
        " (tr) => tr.cells[0].textContent);")
    assert names == ["mixed", HOSTILE]
    legend = page.text("chart-latency-names")
    assert f"{HOSTILE} p50" in legend
    assert json.loads(page.text("custom"))["motto"] == HOSTILE
    assert_no_script_error(page)


def test_a_run_where_every_call_fails_draws_its_rates(
        tmp_path: Path, page: Page, fail_only_doc: dict[str, Any]) -> None:
    open_report(page, fail_only_doc, tmp_path / "report.html")
    assert charts_drawn(page) == len(FAIL_ONLY_CHARTS)
    sizes = canvas_sizes(page)
    assert sorted(sizes) == sorted(FAIL_ONLY_CHARTS)
    assert all(min(size or [0]) > 0 for size in sizes.values()), sizes
    assert page.text("total-ok") == "0"
    assert page.text("total-fail") == str(fail_only_doc["totals"]["all"]["fail"])
    assert_no_script_error(page)


def test_a_run_that_failed_before_its_load_shows_its_error_and_no_chart(
        tmp_path: Path, page: Page, failed_doc: dict[str, Any]) -> None:
    open_report(page, failed_doc, tmp_path / "report.html")
    assert charts_drawn(page) == 0
    assert canvas_sizes(page) == {}
    assert page.text("run-error") == failed_doc["error"].strip()
    assert page.text("incomplete") == "INCOMPLETE"
    assert page.shown("no-figures")
    page.screenshot("failed")
    assert_no_script_error(page)


def test_a_script_error_is_shown_on_the_page(tmp_path: Path, page: Page,
                                            http_doc: dict[str, Any]) -> None:
    open_report(page, http_doc, tmp_path / "report.html")
    assert_no_script_error(page)
    # the page's own resize handler now fails
    page.driver.execute_script("window.requestAnimationFrame = null;")
    page.driver.set_window_size(1000, 1500)
    wait(page, lambda: page.text("report-errors") != "", 10, "the error to be shown")
    assert page.shown("report-errors")
    assert "requestAnimationFrame is not a function" in page.text("report-errors")
    assert page.severe()

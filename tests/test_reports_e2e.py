"""Reports people keep, end to end: `loadmaster run --out --html --csv --json --metrics`,
`loadmaster report` from the result file, `loadmaster compare` for CI.

Three real runs against the example target on loopback (each 3 s, one worker, four
clients, every 7th call failing): A and B with a 10 ms delay in the target, C with
50 ms, so C is a slower run made on purpose. The HTML report's own checks (and the
browser's) are in tests/test_html_report*.py.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_helpers import (
    ROOT,
    LineReader,
    Result,
    Target,
    free_port,
    kill_tagged,
    new_tag,
    run_master,
    started_master,
    tagged_env,
    wait_no_tagged,
    write_job,
)

SUMMARY_SCHEMA = json.loads((ROOT / "loadmaster" / "schemas" / "summary-schema.json")
                            .read_text())
CONF = {"users": 4, "hatch_rate": 100, "run_time": 3, "worker": 1}


@dataclass
class Run:
    folder: Path
    result: Result

    @property
    def out(self) -> Path:
        return self.folder / "result.json"

    def doc(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data

    def file(self, name: str) -> Path:
        return self.folder / name


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadmaster", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env=tagged_env("reports-cli"), stdin=subprocess.DEVNULL)


def final_block(stdout: str) -> str:
    """The final block as printed, from its rule to the end of the output."""
    i = stdout.rfind("final benchmark:")
    assert i >= 0, stdout
    start = stdout.rfind("=" * 40, 0, i)
    return stdout[start:].rstrip("\n")


def scrape(url: str) -> dict[str, Any]:
    """Sample name + labels -> value, from a real GET parsed by prometheus-client."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return out


def sample(samples: dict[str, Any], metric: str, **labels: str) -> Any:
    return samples[metric + json.dumps(labels, sort_keys=True)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Runs A, B (10 ms targets) and C (50 ms); A also serves /metrics, scraped once
    during its load and once after its final block (kept 30 s, ended by SIGINT)."""
    tag = new_tag()
    base = tmp_path_factory.mktemp("reports")
    targets = {"fast": Target(tag, fail_every=7, delay_ms=10),
               "slow": Target(tag, fail_every=7, delay_ms=50)}
    out: dict[str, Run] = {}
    try:
        for name, target in (("A", "fast"), ("B", "fast"), ("C", "slow")):
            folder = base / name
            folder.mkdir()
            conf = write_job(folder, {**CONF, "host": targets[target].url})
            args = ["--out", "result.json", "--html", "report.html", "--csv", "run",
                    "--json", "summary.json"]
            if name != "A":
                out[name] = Run(folder, run_master(folder, conf, tag, *args))
                continue
            port = free_port()
            url = f"http://127.0.0.1:{port}/metrics"
            with started_master(folder, conf, tag, *args, "--metrics", str(port),
                                "--metrics-keep", "30") as proc:
                stdout, stderr = LineReader(proc.stdout), LineReader(proc.stderr)
                stdout.wait_for("current rps", 30)
                (folder / "live.json").write_text(json.dumps(scrape(url)))
                stdout.wait_for("the final figures stay on", 30)
                (folder / "final.json").write_text(json.dumps(scrape(url)))
                proc.send_signal(2)
                code = proc.wait(30)
                out[name] = Run(folder, Result(code, stdout.text(), stderr.text()))
                (folder / "metrics_url").write_text(url)
        yield out
    finally:
        for t in targets.values():
            t.stop()
        leftover = wait_no_tagged(tag, timeout=15)
        kill_tagged(tag)
        assert not leftover, f"processes left running: {leftover}"


def test_the_runs_wrote_every_report(runs: dict[str, Run]) -> None:
    for name, run in runs.items():
        assert run.result.code == 0, (name, run.result.stdout, run.result.stderr)
        for file in ("result.json", "report.html", "run_stats.csv", "run_failures.csv",
                     "run_stats_history.csv", "summary.json"):
            assert run.file(file).stat().st_size > 0, (name, file)
        assert not [p.name for p in run.folder.iterdir() if p.name.startswith(".")]


def test_the_summary_is_the_final_block_and_follows_its_schema(runs: dict[str, Run]) -> None:
    run = runs["A"]
    summary = json.loads(run.file("summary.json").read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA, cls=jsonschema.Draft202012Validator)
    total, doc = summary["total"], run.doc()
    assert total["ok"] == run.result.final_int("success count") > 0
    assert total["fail"] == run.result.final_int("fail count") > 0
    assert total["rps"] == pytest.approx(run.result.final_float("rps"), abs=0.01)
    # the block prints 3 decimals under 10 ms, 1 above
    assert total["p50_ms"] == pytest.approx(run.result.final_float("Median response time"),
                                            abs=0.051)
    assert total["p99_ms"] == pytest.approx(run.result.final_float("99% response time"),
                                            abs=0.051)
    assert total["fail_ratio"] == pytest.approx(total["fail"] / (total["ok"] + total["fail"]))
    assert summary["run_id"] == doc["run_id"] and summary["exit_code"] == 0
    assert sum(e["count"] for e in summary["errors"]) == total["fail"]


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_csv_files_parse_in_locusts_shape_and_agree_with_the_json(
        runs: dict[str, Run]) -> None:
    run = runs["A"]
    summary = json.loads(run.file("summary.json").read_text())
    stats = read_csv(run.file("run_stats.csv"))
    assert list(stats[0])[:4] == ["Type", "Name", "Request Count", "Failure Count"]
    rows = {r["Name"]: r for r in stats}
    assert set(rows) == {*summary["names"], "Aggregated"}
    for name, figures in [*summary["names"].items(), ("Aggregated", summary["total"])]:
        row = rows[name]
        assert int(row["Request Count"]) == figures["ok"] + figures["fail"]
        assert int(row["Failure Count"]) == figures["fail"]
        for column, key in (("50%", "p50_ms"), ("90%", "p90_ms"), ("99%", "p99_ms"),
                            ("Median Response Time", "p50_ms"), ("Min Response Time", "min_ms"),
                            ("Max Response Time", "max_ms"), ("100%", "max_ms"),
                            ("Average Response Time", "avg_ms")):
            assert float(row[column]) == pytest.approx(figures[key], abs=0.0006), column
        assert float(row["Requests/s"]) * summary["run_time_s"] == pytest.approx(
            figures["ok"] + figures["fail"], rel=1e-4)
    failures = read_csv(run.file("run_failures.csv"))
    assert sum(int(r["Occurrences"]) for r in failures) == summary["total"]["fail"]
    history = read_csv(run.file("run_stats_history.csv"))
    aggregated = [r for r in history if r["Name"] == "Aggregated"]
    doc = run.doc()
    assert len(aggregated) == doc["series"]["seconds"] >= 3
    assert sum(float(r["Requests/s"]) for r in aggregated) == \
        sum(doc["series"]["ok"]) + sum(doc["series"]["fail"])
    counts = [int(r["Total Request Count"]) for r in aggregated]
    assert counts == sorted(counts) and counts[-1] == sum(doc["series"]["ok"]) + \
        sum(doc["series"]["fail"])
    assert int(aggregated[1]["Timestamp"]) - int(aggregated[0]["Timestamp"]) == 1


def test_a_report_from_the_result_file_equals_the_one_the_run_wrote(
        runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["A"]
    gz = tmp_path / "result.json.gz"
    gz.write_bytes(gzip.compress(run.out.read_bytes()))
    for source in (run.out, gz):
        r = cli("report", str(source), "--html", "again.html", "--csv", "again",
                "--json", "again.json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "again.html").read_bytes() == run.file("report.html").read_bytes()
        assert (tmp_path / "again.json").read_bytes() == run.file("summary.json").read_bytes()
        for suffix in ("_stats.csv", "_failures.csv", "_stats_history.csv"):
            assert (tmp_path / f"again{suffix}").read_bytes() == \
                run.file(f"run{suffix}").read_bytes()
        # and it prints the final block as the run did
        assert final_block(r.stdout) in run.result.stdout


def test_metrics_are_served_during_the_run_and_equal_the_final_block_after(
        runs: dict[str, Run]) -> None:
    run = runs["A"]
    live = json.loads(run.file("live.json").read_text())
    final = json.loads(run.file("final.json").read_text())
    assert sample(live, "loadtest_phase", phase="running") == 1
    assert sample(live, "loadtest_users") == 4
    name = "HttpClient"
    assert sample(live, "loadtest_calls_total", name=name, result="ok") > 0
    ok, fail = run.result.final_int("success count"), run.result.final_int("fail count")
    assert sample(final, "loadtest_phase", phase="finished") == 1
    assert sample(final, "loadtest_calls_total", name=name, result="ok") == ok
    assert sample(final, "loadtest_calls_total", name=name, result="fail") == fail
    assert sample(final, "loadtest_response_time_seconds_count", name=name) == ok
    assert sample(final, "loadtest_response_time_seconds_bucket", name=name, le="+Inf") == ok
    # the target sleeps 10 ms: no success is under 5 ms, every one is under 1 s
    assert sample(final, "loadtest_response_time_seconds_bucket", name=name, le="0.005") == 0
    assert sample(final, "loadtest_response_time_seconds_bucket", name=name, le="1.0") == ok
    assert sample(final, "loadtest_agent_calls_total", agent="local", result="ok") == ok
    assert sample(final, "loadtest_exit_code") == 0
    assert sample(live, "loadtest_calls_total", name=name, result="ok") <= ok
    # Ctrl-C ended the keep period, not the run: its exit code stays 0
    assert run.result.code == 0


def test_compare_passes_equal_runs(runs: dict[str, Run]) -> None:
    a, b = runs["A"], runs["B"]
    same = cli("compare", str(a.out), str(a.out), cwd=a.folder)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no regression" in same.stdout and "WORSE" not in same.stdout
    # two runs of the same test: equal within a tolerance wider than this host's noise
    r = cli("compare", str(a.out), str(b.out), "--tolerance", "50%",
            "--fail-tolerance", "10", cwd=a.folder)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no regression" in r.stdout


def test_compare_flags_a_run_made_slower_on_purpose(runs: dict[str, Run]) -> None:
    a, c = runs["A"], runs["C"]
    # a result file against a summary: compare reads either
    r = cli("compare", str(a.out), str(c.file("summary.json")), "--tolerance", "50%",
            cwd=a.folder)
    assert r.returncode == 8, r.stdout + r.stderr
    assert "REGRESSION" in r.stdout
    worse = [line for line in r.stdout.splitlines() if line.endswith("WORSE")]
    assert any(line.startswith("all names") and " rps " in line for line in worse)
    assert any(" p50 ms " in line for line in worse)
    # the other way round it is faster: flagged as better, no regression
    back = cli("compare", str(c.out), str(a.out), "--tolerance", "50%", cwd=a.folder)
    assert back.returncode == 0 and "better" in back.stdout


def test_compare_reports_names_present_in_one_run_only(runs: dict[str, Run],
                                                       tmp_path: Path) -> None:
    summary = json.loads(runs["A"].file("summary.json").read_text())
    other = json.loads(json.dumps(summary))
    other["names"]["Login"] = other["names"].pop("HttpClient")
    (tmp_path / "a.json").write_text(json.dumps(summary))
    (tmp_path / "b.json").write_text(json.dumps(other))
    r = cli("compare", "a.json", "b.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "only in A (a.json): HttpClient" in r.stdout
    assert "only in B (b.json): Login" in r.stdout


def _broken(doc: dict[str, Any], folder: Path) -> dict[str, tuple[Path, str]]:
    """File -> (path, what the error must say), one per kind of bad input."""
    text = json.dumps(doc)
    cases: dict[str, tuple[bytes, str]] = {
        "truncated.json": (text[: len(text) // 2].encode(), "truncated"),
        "truncated.json.gz": (gzip.compress(text.encode())[:200], "truncated"),
        "v9.json": (json.dumps({**doc, "version": 9}).encode(), "schema version 9"),
        "other.json": (b'{"users": 3, "rps": 12}', "not a loadtest result file"),
        "list.json": (b"[1, 2, 3]", "not a loadtest result file"),
        "binary.json": (b"\x00\xff\xfe", "not a result file"),
        "empty.json": (b"", "empty"),
        "bad-field.json": (json.dumps({**doc, "run_time": "long"}).encode(), "run_time"),
    }
    hist = json.loads(text)
    hist["totals"]["all"]["hist"]["c"].append(5)
    cases["bad-hist.json"] = (json.dumps(hist).encode(), "totals/all/hist")
    out = {}
    for name, (data, says) in cases.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, says)
    return out


def test_bad_result_files_are_named_with_what_is_wrong_exit_2(runs: dict[str, Run],
                                                             tmp_path: Path) -> None:
    good = runs["A"].out
    for name, (path, says) in _broken(runs["A"].doc(), tmp_path).items():
        for args in (("report", str(path), "--html", "x.html"),
                     ("compare", str(good), str(path))):
            r = cli(*args, cwd=tmp_path)
            assert r.returncode == 2, (name, args, r.stdout, r.stderr)
            assert f"loadmaster: {path}: " in r.stderr and says in r.stderr, (name, r.stderr)
            assert "Traceback" not in r.stderr
        assert not (tmp_path / "x.html").exists()
    missing = cli("report", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 2 and "nope.json: cannot read" in missing.stderr
    nowhere = cli("report", str(good), "--html", "/no/such/folder/r.html", cwd=tmp_path)
    assert nowhere.returncode == 2 and "--html /no/such/folder/r.html" in nowhere.stderr
    tolerance = cli("compare", str(good), str(good), "--tolerance", "-3%", cwd=tmp_path)
    assert tolerance.returncode == 2 and "--tolerance" in tolerance.stderr


def test_a_run_that_failed_before_its_load_still_leaves_its_reports(
        tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {**CONF, "host": "http://127.0.0.1:9/"},
                     client="def broken(:\n")
    r = run_master(tmp_path, conf, tag, "--out", "result.json", "--html", "r.html",
                   "--json", "s.json", "--csv", "run")
    assert r.code == 3, r.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["total"] is None and summary["exit_code"] == 3
    assert "does not compile" in summary["error"]
    assert "no figures" in (tmp_path / "r.html").read_text().lower()
    assert read_csv(tmp_path / "run_stats.csv")[-1]["Request Count"] == "0"
    again = cli("report", "result.json", cwd=tmp_path)
    assert again.returncode == 0 and "has no final block (exit code 3)" in again.stdout
    cmp = cli("compare", "result.json", "s.json", cwd=tmp_path)
    assert cmp.returncode == 2 and "no final figures to compare" in cmp.stderr


def _with_names(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with two more names: one called "Aggregated" (the same figures as the real
    one) and one whose every call failed."""
    doc = json.loads(json.dumps(doc))
    real = next(iter(doc["totals"]["names"]))
    names, series = doc["totals"]["names"], doc["series"]["names"]
    names["Aggregated"] = json.loads(json.dumps(names[real]))
    series["Aggregated"] = json.loads(json.dumps(series[real]))
    n = doc["series"]["seconds"]
    failing = json.loads(json.dumps(names[real]))
    failing.update(ok=0, fail=7, sum_ns=0, min_ns=None, max_ns=None, mean_ns=None, rps=0.0,
                   p50_ns=None, p90_ns=None, p95_ns=None, p99_ns=None, p99_9_ns=None,
                   hist={"i": [], "c": []}, statuses={}, bytes_sent=0, bytes_received=0)
    names["Broken"] = failing
    series["Broken"] = {"ok": [0] * n, "fail": [7] + [0] * (n - 1),
                        "hist": [{"i": [], "c": []}] * n}
    for key in ("ok", "fail"):
        doc["series"][key] = [sum(s[key][k] for s in series.values()) for k in range(n)]
    return doc


def test_csv_of_several_names_keeps_each_apart(runs: dict[str, Run], tmp_path: Path) -> None:
    doc = _with_names(runs["A"].doc())
    (tmp_path / "many.json").write_text(json.dumps(doc))
    r = cli("report", "many.json", "--csv", "many", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stats = read_csv(tmp_path / "many_stats.csv")
    broken = next(row for row in stats if row["Name"] == "Broken")
    assert broken["Request Count"] == broken["Failure Count"] == "7"
    assert broken["50%"] == broken["100%"] == broken["Median Response Time"] == "N/A"
    real = next(iter(runs["A"].doc()["totals"]["names"]))
    rows = {row["Name"]: row for row in stats[:-1]}
    assert rows["Aggregated"]["Request Count"] == rows[real]["Request Count"]
    assert stats[-1]["Name"] == "Aggregated"  # the merged row comes last, as Locust's
    assert int(stats[-1]["Request Count"]) == 2 * int(rows[real]["Request Count"]) + 7
    history = read_csv(tmp_path / "many_stats_history.csv")
    last = {row["Name"]: row for row in history[-4:]}
    assert len(last) == 3  # the name "Aggregated" and the merged row share a label
    per_name = [row for row in history if row["Name"] == real]
    mine = [row for row in history if row["Name"] == "Aggregated"][0::2]
    merged = [row for row in history if row["Name"] == "Aggregated"][1::2]
    assert [r["Total Request Count"] for r in mine] == \
        [r["Total Request Count"] for r in per_name]
    assert int(merged[-1]["Total Request Count"]) == \
        sum(doc["series"]["ok"]) + sum(doc["series"]["fail"])


def _hostile(doc: dict[str, Any], summary: str) -> dict[str, tuple[str, str]]:
    """File name -> (JSON text a schema check alone would let through, or that is not a
    result file at all, and what the error must say)."""
    text = json.dumps(doc)
    n = doc["series"]["seconds"]
    no_run_time = {**doc, "run_time": None}
    far = {**doc, "t0": 1e300}
    nested = "[" * 5000 + "]" * 5000
    return {
        "nan.json": (text.replace('"run_time": ', '"run_time": NaN, "x": ', 1), "NaN"),
        "inf.json": (text.replace('"run_time": ', '"run_time": Infinity, "x": ', 1),
                     "Infinity"),
        "float-seconds.json": (text.replace(f'"seconds": {n}', f'"seconds": {n}.0'),
                               "series/seconds"),
        "no-run-time.json": (json.dumps(no_run_time), "run_time"),
        "far-t0.json": (json.dumps(far), "t0"),
        "huge.json": (text.replace('"missed_deltas": 0', '"missed_deltas": 1' + "0" * 40),
                      "out of range"),
        "deep.json": (text.replace('"custom": {', f'"custom": {{"x": {nested}, ', 1),
                      "nested too deeply"),
        "summary.json": (summary, "a JSON summary, not a result file"),
    }


def test_hostile_result_files_are_refused_not_crashed_on(runs: dict[str, Run],
                                                        tmp_path: Path) -> None:
    run = runs["A"]
    for name, (text, says) in _hostile(run.doc(), run.file("summary.json").read_text()).items():
        (tmp_path / name).write_text(text)
        r = cli("report", name, "--html", "x.html", "--csv", "x", "--json", "x.json",
                cwd=tmp_path)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert f"loadmaster: {name}: " in r.stderr and says in r.stderr, (name, r.stderr)
        assert "Traceback" not in r.stderr


def test_report_will_not_overwrite_the_result_file_it_reads(runs: dict[str, Run],
                                                           tmp_path: Path) -> None:
    copy = tmp_path / "r.json"
    copy.write_bytes(runs["A"].out.read_bytes())
    r = cli("report", "r.json", "--json", "r.json", cwd=tmp_path)
    assert r.returncode == 2 and "that is the result file being read" in r.stderr
    assert copy.read_bytes() == runs["A"].out.read_bytes()

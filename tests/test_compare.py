"""`loadmaster compare`'s judgement on summaries built by hand: what is flagged, which
way, and at the tolerance's edge (the end-to-end runs are in test_reports_e2e.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from loadmaster.compare import ALL_NAMES, compare, format_comparison, parse_percent


def figures(ok: int = 1000, fail: int = 0, rps: float = 100.0, p50: float | None = 10.0,
            p90: float | None = 20.0, p99: float | None = 40.0) -> dict[str, Any]:
    calls = ok + fail
    return {"ok": ok, "fail": fail, "rps": rps, "fail_ratio": fail / calls if calls else 0.0,
            "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}


def summary(**names: dict[str, Any]) -> dict[str, Any]:
    total = next(iter(names.values())) if names else figures()
    return {"names": names, "total": total, "incomplete": False, "exit_code": 0}


def verdicts(result: Any, name: str = ALL_NAMES) -> dict[str, str]:
    return {r.figure: r.verdict for r in result.rows if r.name == name}


def test_equal_runs_have_no_verdict() -> None:
    a = summary(login=figures())
    result = compare(a, copy.deepcopy(a), 5, 1)
    assert not result.regressions
    assert set(verdicts(result).values()) == {""}


def test_slower_and_fewer_is_worse_faster_and_more_is_better() -> None:
    a = summary(x=figures())
    worse = compare(a, summary(x=figures(rps=80, p50=12, p90=20, p99=40)), 5, 1)
    assert verdicts(worse) == {"rps": "WORSE", "p50 ms": "WORSE", "p90 ms": "",
                               "p99 ms": "", "fail %": ""}
    better = compare(a, summary(x=figures(rps=120, p50=8)), 5, 1)
    assert verdicts(better)["rps"] == verdicts(better)["p50 ms"] == "better"
    assert not better.regressions


def test_a_change_of_exactly_the_tolerance_is_within_it() -> None:
    a = summary(x=figures(p50=0.3))
    assert not compare(a, summary(x=figures(p50=0.315)), 5, 1).regressions  # +5.0000...04%
    assert compare(a, summary(x=figures(p50=0.3152)), 5, 1).regressions


def test_the_fail_ratio_changes_by_percentage_points() -> None:
    a = summary(x=figures(ok=1000, fail=0))
    small = compare(a, summary(x=figures(ok=995, fail=5)), 5, 1)  # 0.5 points
    assert not small.regressions
    row = next(r for r in small.rows if r.figure == "fail %")
    assert row.change == pytest.approx(0.5) and row.points
    big = compare(a, summary(x=figures(ok=970, fail=30)), 5, 1)  # 3 points
    assert verdicts(big)["fail %"] == "WORSE"


def test_a_run_where_every_call_failed_is_worse_though_its_percentiles_are_none() -> None:
    a = summary(x=figures())
    b = summary(x=figures(ok=0, fail=1000, rps=0.0, p50=None, p90=None, p99=None))
    result = compare(a, b, 5, 1)
    assert verdicts(result) == {"rps": "WORSE", "p50 ms": "WORSE", "p90 ms": "WORSE",
                                "p99 ms": "WORSE", "fail %": "WORSE"}
    text = format_comparison(result, ("a.json", "b.json"), 5, 1)
    assert "REGRESSION" in text and "exit 8" in text


def test_from_nothing_to_something_is_a_change_without_a_percentage() -> None:
    a = summary(x=figures(ok=0, rps=0.0, p50=None, p90=None, p99=None))
    result = compare(a, summary(x=figures()), 5, 1)
    rps = next(r for r in result.rows if r.figure == "rps")
    assert rps.change is None and rps.verdict == "better"
    assert not result.regressions
    assert "new" in format_comparison(result, ("a", "b"), 5, 1)


def test_names_in_one_run_only_are_listed_not_compared() -> None:
    a = summary(login=figures(), browse=figures())
    b = summary(login=figures(), buy=figures(rps=1))
    result = compare(a, b, 5, 1)
    assert result.only_a == ["browse"] and result.only_b == ["buy"]
    assert {r.name for r in result.rows} == {ALL_NAMES, "login"}
    text = format_comparison(result, ("a.json", "b.json"), 5, 1)
    assert "only in A (a.json): browse" in text and "only in B (b.json): buy" in text


def test_an_incomplete_run_is_noted() -> None:
    a = summary(x=figures())
    b = {**summary(x=figures()), "incomplete": True, "exit_code": 5}
    text = format_comparison(compare(a, b, 5, 1), ("a", "b"), 5, 1)
    assert "B: its totals are incomplete (exit code 5)" in text


@pytest.mark.parametrize(("text", "value"), [("5%", 5.0), ("5", 5.0), (" 0.5 % ", 0.5),
                                             ("0", 0.0)])
def test_percentages_parse(text: str, value: float) -> None:
    assert parse_percent(text, "--tolerance") == value


@pytest.mark.parametrize("text", ["-1%", "abc", "nan", "inf", "", "%"])
def test_bad_percentages_name_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--tolerance"):
        parse_percent(text, "--tolerance")

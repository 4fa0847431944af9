"""``loadmaster compare A B``: two runs side by side, per name, for CI.

For every name of both runs (and all names merged): rps, p50, p90, p99 and the fail
ratio of A and B, and the change from A to B. rps and the percentiles change by a
relative amount (flagged beyond ``--tolerance``); the fail ratio by percentage points
(flagged beyond ``--fail-tolerance``), since a ratio that was 0 has no relative change.
A flagged change for the worse is a regression: exit 8. Names found in one run only are
listed; they are not compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALL_NAMES", "Comparison", "Row", "compare", "format_comparison", "parse_percent"]

ALL_NAMES = "all names"
EPSILON = 1e-9  # a change of exactly the tolerance is within it, whatever float rounding says


@dataclass(frozen=True)
class Figure:
    key: str  # in the summary's figures
    label: str
    higher_is_better: bool
    points: bool = False  # a ratio compared in percentage points


FIGURES = (Figure("rps", "rps", True), Figure("p50_ms", "p50 ms", False),
           Figure("p90_ms", "p90 ms", False), Figure("p99_ms", "p99 ms", False),
           Figure("fail_ratio", "fail %", False, points=True))


@dataclass
class Row:
    name: str
    figure: str
    a: float | None
    b: float | None
    change: float | None  # relative (0.1 = +10%), or percentage points for a ratio
    points: bool
    verdict: str  # "", "better" or "WORSE"


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "WORSE"]


def parse_percent(text: str, option: str) -> float:
    """``5%`` or ``5`` -> 5.0; ValueError naming ``option`` otherwise."""
    value = text.strip().removesuffix("%").strip()
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{option}: expected a percentage such as 5% (0 or more), got {text!r}")
    return number


def _row(name: str, fig: Figure, a: Mapping[str, Any], b: Mapping[str, Any],
         tolerance: float, fail_tolerance: float) -> Row:
    va, vb = a[fig.key], b[fig.key]
    change: float | None = None
    verdict = ""
    if va is not None and vb is not None:
        if fig.points:
            change = 100 * (vb - va)
            beyond = abs(change) > fail_tolerance + EPSILON
        elif va > 0:
            change = (vb - va) / va
            beyond = abs(change) * 100 > tolerance + EPSILON
        else:
            beyond = vb > 0  # from nothing to something: no percentage, still a change
        if beyond and vb != va:
            verdict = "better" if (vb > va) == fig.higher_is_better else "WORSE"
    elif va is not None:
        verdict = "WORSE"  # a latency A had and B has not: B had no successful call
    return Row(name, fig.label, va, vb, change, fig.points, verdict)


def compare(a: Mapping[str, Any], b: Mapping[str, Any], tolerance: float,
            fail_tolerance: float, labels: tuple[str, str] = ("A", "B")) -> Comparison:
    """Summaries ``a`` and ``b`` (both with final figures) compared; ``tolerance`` in
    percent, ``fail_tolerance`` in percentage points."""
    out = Comparison()
    names_a, names_b = set(a["names"]), set(b["names"])
    out.only_a = sorted(names_a - names_b)
    out.only_b = sorted(names_b - names_a)
    pairs = [(ALL_NAMES, a["total"], b["total"])]
    pairs += [(name, a["names"][name], b["names"][name]) for name in sorted(names_a & names_b)]
    for name, fa, fb in pairs:
        out.rows.extend(_row(name, fig, fa, fb, tolerance, fail_tolerance) for fig in FIGURES)
    for label, s in zip(labels, (a, b), strict=True):
        if s["incomplete"]:
            out.notes.append(f"{label}: its totals are incomplete (exit code {s['exit_code']})")
        elif s["exit_code"] != 0:
            out.notes.append(f"{label}: the run exited {s['exit_code']}")
    return out


def _value(v: float | None, points: bool) -> str:
    if v is None:
        return "-"
    if points:
        return f"{100 * v:.2f}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _change(row: Row) -> str:
    if row.change is None:
        return "-" if row.a is None or row.b is None or row.a == row.b else "new"
    if row.points:
        return f"{row.change:+.2f} pt"
    return f"{100 * row.change:+.1f}%"


def format_comparison(cmp: Comparison, labels: tuple[str, str], tolerance: float,
                      fail_tolerance: float) -> str:
    """The table and the verdict, as printed."""
    la, lb = labels
    width = max([24, *(len(r.name) for r in cmp.rows)])
    width = min(width, 48)
    lines = [f"A = {la}", f"B = {lb}",
             f"tolerance: {tolerance:g}% (rps, percentiles); fail ratio: {fail_tolerance:g} "
             f"percentage point(s)",
             f"{'name':<{width}} {'figure':<8} {'A':>12} {'B':>12} {'change':>10}"]
    last = ""
    for r in cmp.rows:
        name = r.name[:width] if r.name != last else ""
        last = r.name
        lines.append(f"{name:<{width}} {r.figure:<8} {_value(r.a, r.points):>12} "
                     f"{_value(r.b, r.points):>12} {_change(r):>10}  {r.verdict}".rstrip())
    if cmp.only_a:
        lines.append(f"only in A ({la}): {', '.join(cmp.only_a)}")
    if cmp.only_b:
        lines.append(f"only in B ({lb}): {', '.join(cmp.only_b)}")
    lines.extend(cmp.notes)
    worse = cmp.regressions
    if worse:
        lines.append(f"REGRESSION: {len(worse)} figure(s) worse beyond the tolerance (exit 8)")
    else:
        lines.append("no regression beyond the tolerance")
    return "\n".join(lines)

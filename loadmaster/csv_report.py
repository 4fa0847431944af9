"""CSV files in Locust's shape (``--csv PREFIX``), so scripts written for Locust's
``PREFIX_stats.csv``, ``PREFIX_failures.csv`` and ``PREFIX_stats_history.csv`` read ours.

Built from the result document. The columns are Locust's, with its meanings where ours
differ from the final block: "Request Count" and "Requests/s" count every call, failed
ones too (our rps counts successes), and the row of all names is "Aggregated". Times
are in milliseconds (3 decimals where Locust rounds to whole ms); response times are
those of successful calls, from the merged histograms (within 0.4%; min and max in the
stats file are exact). A percentile without any successful call is "N/A", as Locust
writes it.

The history has one row a second of the run per name and one "Aggregated" (Locust's
``--csv-full-history``): its percentiles are of that second's calls; the "Total"
columns are cumulative up to that second (their min, max and average from the
histograms). A second's content size is not recorded: "Total Average Content Size" is
the run's, on every row.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from loadmaster.resultfile import (
    bucket_values,
    dense_counts,
    flatten_series,
    merge_flat,
    percentiles,
    second_quantiles,
    totals_of,
)
from protocol.histogram import MAX_INDEX
from protocol.stats import OpStats

__all__ = ["AGGREGATED", "CSV_SUFFIXES", "HISTORY_COLUMNS", "PERCENTILES", "STATS_COLUMNS",
           "csv_reports"]

AGGREGATED = "Aggregated"
PERCENTILES = (0.5, 0.66, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0)
PERCENTILE_COLUMNS = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%",
                      "99.99%", "100%"]
STATS_COLUMNS = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time",
                 "Average Response Time", "Min Response Time", "Max Response Time",
                 "Average Content Size", "Requests/s", "Failures/s", *PERCENTILE_COLUMNS]
FAILURES_COLUMNS = ["Method", "Name", "Error", "Occurrences"]
HISTORY_COLUMNS = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s",
                   *PERCENTILE_COLUMNS, "Total Request Count", "Total Failure Count",
                   "Total Median Response Time", "Total Average Response Time",
                   "Total Min Response Time", "Total Max Response Time",
                   "Total Average Content Size"]
NA = "N/A"
CSV_SUFFIXES = ("_stats.csv", "_failures.csv", "_stats_history.csv")


def _ms(ns: float | None) -> str:
    return NA if ns is None else f"{ns / 1e6:.3f}"


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.6f}" if seconds > 0 else "0.000000"


def _content(st: OpStats) -> str:
    calls = st.ok + st.fail
    return f"{st.received / calls:.2f}" if calls else "0.00"


def _text(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _stats_rows(named: Sequence[OpStats], total: OpStats, run_time: float) -> list[list[str]]:
    rows = []
    for label, st in [*((st.name, st) for st in named), (AGGREGATED, total)]:
        rows.append(["", label, str(st.ok + st.fail), str(st.fail), _ms(st.percentile(0.5)),
                     _ms(st.mean_ns), _ms(st.min_value), _ms(st.max_ns if st.ok else None),
                     _content(st), _rate(st.ok + st.fail, run_time), _rate(st.fail, run_time),
                     *(_ms(st.percentile(q) if q < 1 else st.max_ns if st.ok else None)
                       for q in PERCENTILES)])
    return rows


class _Running:
    """One row's figures a second, and cumulative up to it, over the buckets
    ``values`` (the run's span of bucket values: the arrays stay short)."""

    def __init__(self, values: npt.NDArray[np.int64]) -> None:
        self.values = values
        self.counts: npt.NDArray[np.int64] = np.zeros_like(values)
        self.calls = 0
        self.fail = 0

    def row(self, ts: int, clients: int, label: str, second: npt.NDArray[np.int64], ok: int,
            fail: int, content: str, quantiles: Sequence[float]) -> list[str]:
        """``second``: that second's counts; ``quantiles``: its PERCENTILES (ns, NaN
        without a success)."""
        self.counts += second
        self.calls += ok + fail
        self.fail += fail
        done = int(self.counts.sum())
        mean = low = high = None
        if done:
            nonzero = np.flatnonzero(self.counts)
            mean = float(self.counts @ self.values) / done
            low, high = int(self.values[nonzero[0]]), int(self.values[nonzero[-1]])
        return [str(ts), str(clients), "", label, f"{ok + fail:.6f}", f"{fail:.6f}",
                *(_ms(None if math.isnan(q) else q) for q in quantiles), str(self.calls),
                str(self.fail), _ms(percentiles(self.counts, (0.5,), self.values)[0]),
                _ms(mean), _ms(low), _ms(high), content]


def _span(hists: Iterable[Mapping[str, Sequence[int]]]) -> tuple[int, int]:
    """The lowest and highest bucket index of ``hists`` (0, 0 when all are empty)."""
    low, high = MAX_INDEX, 0
    for h in hists:
        if h["i"]:
            first = h["i"][0]
            low, high = min(low, first), max(high, first + sum(h["i"][1:]))
    return (low, high) if low <= high else (0, 0)


def _history_rows(doc: Mapping[str, Any], named: Sequence[OpStats],
                  total: OpStats) -> list[list[str]]:
    series = doc["series"]
    t0 = doc["t0"] or 0.0
    names = sorted(series["names"])
    content = {st.name: _content(st) for st in named}
    low, high = _span(h for name in names for h in series["names"][name]["hist"])
    values = bucket_values()[low:high + 1]
    running = {name: _Running(values) for name in names}
    merged_running = _Running(values)  # its own, even beside a name called "Aggregated"
    # each second's percentiles, per name and merged, computed for every second at once
    n = series["seconds"]
    flat = {name: flatten_series(series["names"][name]["hist"]) for name in names}
    per_second = {name: np.column_stack(second_quantiles(b, n, PERCENTILES))
                  for name, b in flat.items()}
    calls = [name for name in names if not series["names"][name].get("step")]  # (not steps)
    merged_per_second = np.column_stack(second_quantiles(
        merge_flat(flat[name] for name in calls), n, PERCENTILES))
    rows = []
    for k in range(n):
        ts, clients = int(t0) + k + 1, series["clients"][k]
        merged = np.zeros_like(values)
        for name in names:
            s = series["names"][name]
            counts = dense_counts(s["hist"][k], low, high)
            if not s.get("step"):
                merged += counts
            rows.append(running[name].row(ts, clients, name, counts, s["ok"][k], s["fail"][k],
                                          content.get(name, "0.00"), per_second[name][k]))
        rows.append(merged_running.row(ts, clients, AGGREGATED, merged, series["ok"][k],
                                       series["fail"][k], _content(total),
                                       merged_per_second[k]))
    return rows


def csv_reports(doc: Mapping[str, Any]) -> dict[str, str]:
    """File suffix (``_stats.csv``...) -> its text, for a result document."""
    totals = totals_of(doc)
    named = [totals.ops[name] for name in sorted(totals.ops)]
    total = totals.combined()
    run_time = doc["run_time"] or 0.0
    failures = [["", e["name"], f"{e['type']}: {e['message']}", str(e["count"])]
                for e in doc["errors"]]
    texts = (_text(_stats_rows(named, total, run_time), STATS_COLUMNS),
             _text(failures, FAILURES_COLUMNS),
             _text(_history_rows(doc, named, total), HISTORY_COLUMNS))
    return dict(zip(CSV_SUFFIXES, texts, strict=True))

"""DELTA messages decoded in batches: the master's stats channel takes thousands a second.

``decode_deltas`` accepts and refuses exactly what ``decode`` does for each body, with
the same messages, but makes no objects of the deltas: each one's scalar fields stay in
the array they came in, each of its operations becomes a row (a tuple of its figures,
``Row``), which the master merges a batch at a time, figure by figure; and the batch's
histograms are checked all at once by ``unpack_many``, which leaves them in one pair of
arrays for the master's vector adds. ``DeltaBatch.delta`` makes a ``Delta`` of one,
histograms included, for whoever wants the objects.

How it keeps to ``decode``'s rules: the common shape of a body (every type exact, every
number in range, status codes well formed, few errors) is checked inline; a body that
differs in any way, even one ``decode`` accepts, goes through ``decode``'s own checks
(the fields' checkers, ``Totals.parse``, ``Delta``'s ``__post_init__``), which refuse it
with their message or accept it. The inline checks may refuse more than those, never
less (``tests/test_delta_batch.py`` holds the two side by side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import isfinite
from typing import Any, Final

from protocol.calls import MAX_STATUS_CODES
from protocol.histogram import MAX_VALUE_NS, Histogram, Unpacked, unpack_many
from protocol.stats import (
    MAX_ERROR_TEXT,
    MAX_ERRORS_PER_NAME,
    ErrorKey,
    OpStats,
    StatsFormatError,
    Totals,
)
from protocol.wire.codec import HEADER, MAGIC, PROTOCOL_VERSION, WireError, unpack_body
from protocol.wire.messages import MAX_SECOND, Delta

__all__ = [
    "DELTA_HEADER",
    "DROPPED",
    "FAIL",
    "LATE",
    "MAIN_HIST",
    "MAX",
    "MIN",
    "NAME",
    "OK",
    "OPEN",
    "RECEIVED",
    "SCHED_HIST",
    "SENT",
    "STATUSES",
    "STEP",
    "SUM",
    "DeltaBatch",
    "Row",
    "decode_deltas",
]

DELTA_HEADER = HEADER.pack(MAGIC, PROTOCOL_VERSION, Delta.TYPE)
_TOTALS = [name for name, _ in Delta._field_types()].index("totals")


def _later(v: Any) -> Any:
    return v  # the totals: checked below


_CHECKERS = tuple(_later if i == _TOTALS else check for i, check in enumerate(Delta._checkers()))
# the fields in the order ``decode_deltas`` unpacks them (checked types, inline)
assert [name for name, _ in Delta._field_types()] == [
    "agent", "worker", "seq", "second", "clients", "totals", "cpu_seconds", "loop_lag",
    "sched_lag"]

# One operation of a delta, as ``OpStats.parse`` reads it: name, ok, fail, sum_ns, min_ns
# (MAX_VALUE_NS without a success, as ``OpStats.min_ns``), max_ns, bytes sent, bytes
# received, late, dropped (0 and 0 in the closed model), whether it has the open model's
# figures, whether it is a named step, its status codes (a dict, None without any), then
# where its histograms are in the batch's ``hists``: its MAIN one's number, and in the
# open model its number among the SERVICE ones and among the LAG ones (-1 in the closed
# model; ``DeltaBatch.numbers``).
Row = tuple[str, int, int, int, int, int, int, int, int, int, bool, bool,
            dict[int, int] | None, int, int]
NAME: Final = 0
OK: Final = 1
FAIL: Final = 2
SUM: Final = 3
MIN: Final = 4
MAX: Final = 5
SENT: Final = 6
RECEIVED: Final = 7
LATE: Final = 8
DROPPED: Final = 9
OPEN: Final = 10
STEP: Final = 11
STATUSES: Final = 12
MAIN_HIST: Final = 13
SCHED_HIST: Final = 14


@dataclass(slots=True)
class DeltaBatch:
    """The good deltas of a batch, their operations as rows and their histograms
    unpacked into ``hists``.

    Delta ``k``: ``fields[k]`` are its wire fields, checked (the agent, worker, seq,
    second, clients, cpu_seconds, loop_lag and sched_lag at their wire places; at the
    totals' place nothing), its operations are ``rows[first[k]:first[k + 1]]`` and its
    errors ``errors_of[k]`` (as ``Totals.errors``). The batch's histograms are numbered
    kind by kind: every MAIN one, then every SERVICE one (from ``mains``), then every LAG
    one (from ``mains + opens``), so that one name's histograms of one kind follow each
    other and the master merges them as one slice. ``errors``: why each bad body was
    dropped."""

    fields: list[list[Any]]
    first: list[int]
    rows: list[Row]
    errors_of: list[dict[ErrorKey, int]]
    hists: Unpacked
    mains: int  # MAIN histograms
    opens: int  # rows of the open model (each with a SERVICE and a LAG histogram)
    errors: list[str]

    def __len__(self) -> int:
        return len(self.fields)

    def numbers(self, row: Row) -> tuple[int, ...]:
        """The numbers in ``hists`` of a row's histograms: MAIN, then SERVICE and LAG."""
        s = row[SCHED_HIST]
        return (row[MAIN_HIST],) if s < 0 else (row[MAIN_HIST], self.mains + s,
                                                 self.mains + self.opens + s)

    def delta(self, k: int) -> Delta:
        """Delta ``k`` as ``decode`` makes it, its histograms views of ``hists``'s arrays."""
        totals = Totals()
        hists = self.hists
        for row in self.rows[self.first[k]:self.first[k + 1]]:
            st = totals.op(row[NAME])
            st.ok, st.fail, st.sum_ns = row[OK], row[FAIL], row[SUM]
            st.min_ns, st.max_ns = row[MIN], row[MAX]
            st.sent, st.received, st.step = row[SENT], row[RECEIVED], row[STEP]
            st.statuses = dict(row[STATUSES] or {})
            js = self.numbers(row)
            st.hist = Histogram.from_arrays(*hists.span(js[0]))
            if row[OPEN]:
                sched = st.schedule()
                sched.late, sched.dropped = row[LATE], row[DROPPED]
                sched.service = Histogram.from_arrays(*hists.span(js[1]))
                sched.lag = Histogram.from_arrays(*hists.span(js[2]))
        for key, count in self.errors_of[k].items():
            totals.add_error(key, count)
        values = list(self.fields[k])
        values[_TOTALS] = totals
        return Delta(*values)


# A body's operations read: their rows, the raw byte strings of their histograms (each
# one's MAIN, then each open-model one's SERVICE and LAG), and the body's errors.
_Read = tuple[list[Row], list[tuple[Any, Any]], list[tuple[Any, Any, Any, Any]],
              dict[ErrorKey, int]]


def decode_deltas(bodies: Sequence[bytes]) -> DeltaBatch:
    """The DELTA bodies of a batch (their frames' header checked by the caller)."""
    errors: list[str] = []
    # each body read: its fields, its rows, its errors, and whether its scalar fields are
    # in range (else ``Delta``'s own checks decide, after the histograms, as in ``decode``)
    parsed: list[tuple[list[Any], list[Row], dict[ErrorKey, int], bool, str | None]] = []
    mains: list[tuple[Any, Any]] = []
    services: list[tuple[Any, Any]] = []
    lags: list[tuple[Any, Any]] = []
    checkers = _CHECKERS
    for body in bodies:
        try:
            obj = unpack_body(body, Delta.MAX_SIZE)
            if not isinstance(obj, list) or len(obj) != len(checkers):
                raise WireError(f"Delta: expected an array of {len(checkers)} fields")
            agent, worker, seq, second, clients, raw, cpu, lag, behind = obj
            exact = (type(agent) is str and type(worker) is int and type(seq) is int
                     and type(second) is int and type(clients) is int and type(cpu) is float
                     and type(lag) is float and type(behind) is float and isfinite(cpu)
                     and isfinite(lag) and isfinite(behind))
            if not exact:  # each field checked in the wire order, as ``decode`` does
                values = [check(v) for check, v in zip(checkers[:_TOTALS], obj, strict=False)]
            m, s = len(mains), len(services)
            read = _read(raw, m, s)
            if read is None:
                try:
                    read = _read_parsed(*Totals.parse(raw), m, s)
                except StatsFormatError as e:
                    raise WireError(f"Delta.totals: {e}") from None
        except WireError as e:
            errors.append(str(e))
            continue
        late = None  # a later field's error: ``decode`` finds it after the histograms'
        if exact:
            values = obj  # what every checker passes as it is (the common case)
            plain = (seq >= 0 and clients >= 0 and cpu >= 0 and lag >= 0 and behind >= 0
                     and 1 <= second <= MAX_SECOND)
        else:
            values.append(None)
            try:
                values += [check(v) for check, v in zip(checkers[_TOTALS + 1:],
                                                        obj[_TOTALS + 1:], strict=True)]
            except WireError as e:
                late = str(e)
            plain = False
        rows, main_pairs, open_pairs, errs = read
        mains += main_pairs
        for si, sc, li, lc in open_pairs:
            services.append((si, sc))
            lags.append((li, lc))
        values[_TOTALS] = None
        parsed.append((values, rows, errs, plain, late))
    n_main, n_both = len(mains), len(mains) + len(services)
    hists = unpack_many(mains + services + lags)
    out = DeltaBatch([], [0], [], [], hists, n_main, len(services), errors)
    bad, totals_of = hists.errors, hists.totals
    rows_out = out.rows
    for values, rows, errs, plain, late in parsed:
        good = plain and not bad
        if good:
            for row in rows:
                ok, s = row[OK], row[SCHED_HIST]
                if totals_of[row[MAIN_HIST]] != ok or (s >= 0 and (
                        totals_of[n_main + s] != ok or totals_of[n_both + s] != ok)):
                    good = False
                    break
        if not good:
            why = _refused(values, rows, out, late)
            if why is not None:
                errors.append(why)
                continue
        rows_out += rows
        out.fields.append(values)
        out.first.append(len(rows_out))
        out.errors_of.append(errs)
    return out


def _refused(values: list[Any], rows: list[Row], batch: DeltaBatch,
             late: str | None) -> str | None:
    """Why ``decode`` refuses a delta read whole, given the batch's histograms: its first
    bad histogram or histogram total, else ``late`` (a field after the totals refused),
    else its fields' own checks (``Delta.__post_init__``); None when it does not."""
    bad, totals_of = batch.hists.errors, batch.hists.totals
    try:
        for row in rows:
            js = batch.numbers(row)
            for j in js:
                if j in bad:
                    raise WireError(f"Delta.totals: operation stats {row[NAME]!r}: {bad[j]}")
            st = OpStats(row[NAME])
            st.ok = row[OK]
            st.check_totals([totals_of[j] for j in js])
        if late is not None:
            return late
        fields: list[Any] = list(values)
        fields[_TOTALS] = Totals()
        Delta(*fields)
    except StatsFormatError as e:
        return f"Delta.totals: {e}"
    except WireError as e:
        return str(e)
    except (TypeError, ValueError) as e:  # a field's own check (__post_init__)
        return f"Delta: {e}"
    return None


def _read(raw: Any, m: int, s: int) -> _Read | None:
    """A delta's totals field in its common shape, checked as ``Totals.parse`` checks it,
    its histograms numbered from ``m`` (MAIN) and ``s`` (SERVICE and LAG); None when it
    has any other shape (``Totals.parse`` then decides)."""
    if type(raw) is not list or len(raw) != 2:
        return None
    ops, errs = raw
    if type(ops) is not list or type(errs) is not list:
        return None
    rows: list[Row] = []
    main_pairs: list[tuple[Any, Any]] = []
    open_pairs: list[tuple[Any, Any, Any, Any]] = []
    for o in ops:
        if type(o) is not list or len(o) != 13:
            return None
        (name, ok, fail, sum_ns, mn, mx, indexes, counts, statuses, sent, received, sched,
         step) = o
        if not (type(name) is str and name and type(ok) is int and type(fail) is int
                and type(sum_ns) is int and type(mn) is int and type(mx) is int
                and type(sent) is int and type(received) is int and type(step) is bool
                and ok >= 0 and fail >= 0 and sum_ns >= 0 and mn >= 0 and mx >= 0
                and sent >= 0 and received >= 0):
            return None
        codes = None
        if statuses != []:
            codes = _statuses(statuses)
            if codes is None:
                return None
        main_pairs.append((indexes, counts))
        if sched == []:
            rows.append((name, ok, fail, sum_ns, mn if ok else MAX_VALUE_NS, mx, sent,
                         received, 0, 0, False, step, codes, m, -1))
        elif (type(sched) is list and len(sched) == 6 and type(sched[0]) is int
              and type(sched[1]) is int and sched[0] >= 0 and sched[1] >= 0):
            rows.append((name, ok, fail, sum_ns, mn if ok else MAX_VALUE_NS, mx, sent,
                         received, sched[0], sched[1], True, step, codes, m, s))
            open_pairs.append((sched[2], sched[3], sched[4], sched[5]))
            s += 1
        else:
            return None
        m += 1
    if len(ops) > 1 and len({o[0] for o in ops}) != len(ops):
        return None  # a name twice
    out: dict[ErrorKey, int] = {}
    if errs:
        if len(errs) > MAX_ERRORS_PER_NAME:
            return None  # (some may go to OTHER_ERRORS: ``Totals.add_error`` knows which)
        for e in errs:
            if not (type(e) is list and len(e) == 4 and type(e[0]) is str
                    and type(e[1]) is str and type(e[2]) is str and type(e[3]) is int
                    and e[3] > 0):
                return None
            key = (e[0], e[1], e[2][:MAX_ERROR_TEXT])
            out[key] = out.get(key, 0) + e[3]
    return rows, main_pairs, open_pairs, out


def _statuses(obj: Any) -> dict[int, int] | None:
    """Status counts well formed, as ``OpStats.parse`` wants them; None if not."""
    if type(obj) is not list or len(obj) > MAX_STATUS_CODES:
        return None
    out: dict[int, int] = {}
    for pair in obj:
        if not (type(pair) is list and len(pair) == 2 and type(pair[0]) is int
                and 100 <= pair[0] <= 999 and type(pair[1]) is int and pair[1] > 0
                and pair[0] not in out):
            return None
        out[pair[0]] = pair[1]
    return out


def _read_parsed(totals: Totals, parts: list[tuple[OpStats, list[tuple[Any, Any]]]], m: int,
                 s: int) -> _Read:
    """What ``_read`` gives, from ``Totals.parse``'s objects."""
    rows: list[Row] = []
    main_pairs: list[tuple[Any, Any]] = []
    open_pairs: list[tuple[Any, Any, Any, Any]] = []
    for st, pairs in parts:
        sched = st.sched
        rows.append((st.name, st.ok, st.fail, st.sum_ns, st.min_ns, st.max_ns, st.sent,
                     st.received, 0 if sched is None else sched.late,
                     0 if sched is None else sched.dropped, sched is not None, st.step,
                     st.statuses or None, m, -1 if sched is None else s))
        main_pairs.append(pairs[0])
        m += 1
        if sched is not None:
            open_pairs.append((*pairs[1], *pairs[2]))
            s += 1
    return rows, main_pairs, open_pairs, totals.errors

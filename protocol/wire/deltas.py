"""DELTA messages decoded in batches: the master's stats channel takes thousands a second.

``decode_deltas`` accepts and refuses exactly what ``decode`` does for each body, with
the same checks: the scalar fields by ``Delta``'s own field checkers and ``__post_init__``,
the totals by ``Totals.parse``. Only the histograms differ in how they are checked:
all of a batch's at once, by ``unpack_many``, which also leaves them in one pair of
arrays so that the master can merge a whole batch with a few vector adds (the deltas'
operations get no histogram objects: ``DeltaBatch.complete`` gives them theirs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import isfinite
from typing import Any

from protocol.histogram import Histogram, Unpacked, unpack_many
from protocol.stats import OpStats, StatsFormatError, Totals
from protocol.wire.codec import HEADER, MAGIC, PROTOCOL_VERSION, WireError, unpack_body
from protocol.wire.messages import Delta

__all__ = ["DELTA_HEADER", "DeltaBatch", "decode_deltas"]

DELTA_HEADER = HEADER.pack(MAGIC, PROTOCOL_VERSION, Delta.TYPE)
_TOTALS = [name for name, _ in Delta._field_types()].index("totals")


def _later(v: Any) -> Any:
    return v  # the totals: ``Totals.parse`` below


_CHECKERS = tuple(_later if i == _TOTALS else check for i, check in enumerate(Delta._checkers()))
# the fields in the order ``decode_deltas`` unpacks them (checked types, inline)
assert [name for name, _ in Delta._field_types()] == [
    "agent", "worker", "seq", "second", "clients", "totals", "cpu_seconds", "loop_lag",
    "sched_lag"]


@dataclass(slots=True)
class DeltaBatch:
    """The good deltas of a batch and their histograms, unpacked into ``hists``.

    The deltas' operations carry their counts but not their histograms, which the master
    merges from ``hists`` without making objects of them: ``ops[k]`` lists delta ``k``'s
    operations, each as its name and the numbers in ``hists`` of its histograms by kind
    (``protocol.stats.MAIN``, then in the open model ``SERVICE`` and ``LAG``).
    ``complete(k)`` gives delta ``k`` its histograms. ``errors``: why each bad body was
    dropped."""

    deltas: list[Delta]
    ops: list[list[tuple[str, tuple[int, ...]]]]
    hists: Unpacked
    errors: list[str]

    def complete(self, k: int) -> Delta:
        """Delta ``k`` with its operations' histograms (views of ``hists``'s arrays)."""
        delta, hists = self.deltas[k], self.hists
        for name, js in self.ops[k]:
            delta.totals.ops[name].attach([Histogram.from_arrays(*hists.span(j)) for j in js],
                                          [hists.totals[j] for j in js])
        return delta


def decode_deltas(bodies: Sequence[bytes]) -> DeltaBatch:
    """The DELTA bodies of a batch (their frames' header checked by the caller).

    The batch's histograms are numbered kind by kind (every MAIN one, then every SERVICE
    one, then every LAG one), so one name's histograms of one kind follow each other
    and the master merges them as one slice."""
    errors: list[str] = []
    # each delta's fields, and each operation with its number among the MAIN histograms
    # and among the SERVICE ones (as among the LAG ones: ``OpStats.parse`` gives both or
    # neither), -1 in the closed model
    parsed: list[tuple[list[Any], list[tuple[OpStats, int, int]]]] = []
    mains: list[tuple[Any, Any]] = []
    services: list[tuple[Any, Any]] = []
    lags: list[tuple[Any, Any]] = []
    checkers = _CHECKERS
    for body in bodies:
        try:
            obj = unpack_body(body, Delta.MAX_SIZE)
            if not isinstance(obj, list) or len(obj) != len(checkers):
                raise WireError(f"Delta: expected an array of {len(checkers)} fields")
            agent, worker, seq, second, clients, _, cpu, lag, behind = obj
            if (type(agent) is str and type(worker) is int and type(seq) is int
                    and type(second) is int and type(clients) is int and type(cpu) is float
                    and type(lag) is float and type(behind) is float and isfinite(cpu)
                    and isfinite(lag) and isfinite(behind)):
                values = obj  # what every checker passes as it is (the common case)
            else:
                values = [check(v) for check, v in zip(checkers, obj, strict=True)]
            try:
                totals, ops = Totals.parse(obj[_TOTALS])
            except StatsFormatError as e:
                raise WireError(f"Delta.totals: {e}") from None
        except WireError as e:
            errors.append(str(e))
            continue
        values[_TOTALS] = totals
        numbered = []
        for st, raw in ops:
            if len(raw) == 1:
                numbered.append((st, len(mains), -1))
            else:
                numbered.append((st, len(mains), len(services)))
                services.append(raw[1])
                lags.append(raw[2])
            mains.append(raw[0])
        parsed.append((values, numbered))
    n_main, n_both = len(mains), len(mains) + len(services)
    hists = unpack_many(mains + services + lags)
    out = DeltaBatch([], [], hists, errors)
    bad, totals_of = hists.errors, hists.totals
    for values, numbered in parsed:
        try:
            ops_out: list[tuple[str, tuple[int, ...]]] = []
            for st, m, s in numbered:
                js: tuple[int, ...] = (m,) if s < 0 else (m, n_main + s, n_both + s)
                if bad:
                    for j in js:
                        if j in bad:
                            raise WireError(f"Delta.totals: operation stats {st.name!r}: "
                                            f"{bad[j]}")
                st.check_totals([totals_of[j] for j in js])
                ops_out.append((st.name, js))
            delta = Delta(*values)
        except StatsFormatError as e:
            errors.append(f"Delta.totals: {e}")
            continue
        except WireError as e:
            errors.append(str(e))
            continue
        except (TypeError, ValueError) as e:  # a field's own check (__post_init__)
            errors.append(f"Delta: {e}")
            continue
        out.deltas.append(delta)
        out.ops.append(ops_out)
    return out

"""DELTA messages decoded in batches: the master's stats channel takes thousands a second.

``decode_deltas`` accepts and refuses exactly what ``decode`` does for each body, with
the same checks: the scalar fields by ``Delta``'s own field checkers and ``__post_init__``,
the totals by ``Totals.parse``. Only the histograms differ in how they are checked:
all of a batch's at once, by ``unpack_many``, which also leaves them in one pair of
arrays so that the master can merge a whole batch with a few vector adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(slots=True)
class DeltaBatch:
    """The good deltas of a batch, each operation's histograms views of ``hists``'s
    arrays; ``parts[k][name, kind]`` is the number in ``hists`` of delta ``k``'s histogram
    ``kind`` (``protocol.stats.MAIN``, ``SERVICE``, ``LAG``) of ``name``. ``errors``: why
    each bad body was dropped."""

    deltas: list[Delta]
    parts: list[dict[tuple[str, int], int]]
    hists: Unpacked
    errors: list[str]


def decode_deltas(bodies: Sequence[bytes]) -> DeltaBatch:
    """The DELTA bodies of a batch (their frames' header checked by the caller).

    The batch's histograms are numbered kind by kind (every MAIN one, then every SERVICE
    one, then every LAG one), so one name's histograms of one kind follow each other
    and the master merges them as one slice."""
    errors: list[str] = []
    # each op: the operation and, per kind it has, its number among that kind's
    parsed: list[tuple[list[Any], list[tuple[OpStats, list[int]]]]] = []
    by_kind: list[list[tuple[Any, Any]]] = [[], [], []]
    checkers = _CHECKERS
    for body in bodies:
        try:
            obj = unpack_body(body, Delta.MAX_SIZE)
            if not isinstance(obj, list) or len(obj) != len(checkers):
                raise WireError(f"Delta: expected an array of {len(checkers)} fields")
            values = [check(v) for check, v in zip(checkers, obj, strict=True)]
            try:
                totals, ops = Totals.parse(obj[_TOTALS])
            except StatsFormatError as e:
                raise WireError(f"Delta.totals: {e}") from None
        except WireError as e:
            errors.append(str(e))
            continue
        values[_TOTALS] = totals
        parts = []
        for st, raw in ops:
            local = [len(by_kind[kind]) for kind in range(len(raw))]
            for pairs, pair in zip(by_kind, raw, strict=False):
                pairs.append(pair)
            parts.append((st, local))
        parsed.append((values, parts))
    base = (0, len(by_kind[0]), len(by_kind[0]) + len(by_kind[1]))
    hists = unpack_many([pair for pairs in by_kind for pair in pairs])
    out = DeltaBatch([], [], hists, errors)
    bad, span, totals_of, arrays = hists.errors, hists.span, hists.totals, Histogram.from_arrays
    for values, parts in parsed:
        try:
            numbers = {}
            for st, local in parts:
                js = [base[kind] + n for kind, n in enumerate(local)]
                if bad:
                    for j in js:
                        if j in bad:
                            raise WireError(f"Delta.totals: operation stats {st.name!r}: "
                                            f"{bad[j]}")
                st.attach([arrays(*span(j)) for j in js], [totals_of[j] for j in js])
                name = st.name
                for kind, j in enumerate(js):
                    numbers[name, kind] = j
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
        out.parts.append(numbers)
    return out

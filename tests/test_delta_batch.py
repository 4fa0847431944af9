"""DELTA bodies decoded by the batch accept and refuse exactly what ``decode`` does."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from protocol.stats import Totals
from protocol.wire.codec import WireError, decode, pack
from protocol.wire.deltas import DELTA_HEADER, decode_deltas
from protocol.wire.messages import MAX_SECOND, Delta
from tests.wire_helpers import u16, u32


def good(rng: random.Random, worker: int, names: tuple[str, ...] = ("GET",)) -> Delta:
    t = Totals()
    for name in names:
        st = t.op(name)
        for _ in range(rng.randint(0, 300)):
            st.record_ok(int(rng.lognormvariate(14, 1)))
        st.fail = rng.randint(0, 2)
        st.statuses = {200: st.ok, 503: st.fail} if st.fail else {}
        for _ in range(st.fail):
            t.add_error((name, "HTTPError", "503"), 1)
    return Delta(agent="a", worker=worker, seq=3, second=4, clients=5, totals=t,
                 cpu_seconds=0.5, loop_lag=0.001)


def forged(fields: list[Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def delta_fields(**change: Any) -> list[Any]:
    """A good delta's wire fields, some of them replaced."""
    fields = good(random.Random(1), 9).to_wire()
    names = [name for name, _ in Delta._field_types()]
    for key, value in change.items():
        fields[names.index(key)] = value
    return fields


def op(name: str = "GET", ok: int = 2, indexes: Any = None, counts: Any = None) -> list[Any]:
    return [name, ok, 0, 10, 4, 6, u16([300, 301]) if indexes is None else indexes,
            u32([1, 1]) if counts is None else counts, [], 0, 0, [], False]


BAD: dict[str, bytes] = {
    "not msgpack": b"\xc1\xc1",
    "not an array": forged({"a": 1}),
    "seven fields": forged(delta_fields()[:7]),
    "agent not a string": forged(delta_fields(agent=7)),
    "worker a bool": forged(delta_fields(worker=True)),
    "second zero": forged(delta_fields(second=0)),
    "second too far": forged(delta_fields(second=MAX_SECOND + 1)),
    "negative clients": forged(delta_fields(clients=-1)),
    "cpu not finite": forged(delta_fields(cpu_seconds=float("nan"))),
    "eight fields (no lag behind the schedule)": forged(delta_fields()[:8]),
    "behind schedule negative": forged(delta_fields(sched_lag=-0.5)),
    "behind schedule not finite": forged(delta_fields(sched_lag=float("inf"))),
    "behind schedule an int": forged(delta_fields(sched_lag=True)),
    "totals not an array": forged(delta_fields(totals="x")),
    "an operation's ok negative": forged(delta_fields(totals=[[op(ok=-2)], []])),
    "histogram out of order": forged(delta_fields(
        totals=[[op(indexes=u16([301, 300]))], []])),
    "histogram total is not ok": forged(delta_fields(totals=[[op(ok=3)], []])),
    "histogram of odd bytes": forged(delta_fields(totals=[[op(indexes=b"\x01")], []])),
    "a name twice": forged(delta_fields(totals=[[op(), op()], []])),
    "a bad error entry": forged(delta_fields(totals=[[op()], [["GET", "E", "m", 0]]])),
}


def reference(body: bytes) -> Delta | str:
    try:
        msg = decode([DELTA_HEADER, body])
    except WireError as e:
        return str(e)
    assert isinstance(msg, Delta)
    return msg


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_body_is_refused_with_decodes_reason_and_the_rest_kept(case: str) -> None:
    rng = random.Random(3)
    deltas = [good(rng, w, ("GET", "POST")) for w in range(4)]
    bodies = [pack(d) for d in deltas]
    bodies.insert(2, BAD[case])
    batch = decode_deltas(bodies)
    want = reference(BAD[case])
    assert isinstance(want, str), "decode accepts it: not a bad case"
    assert batch.errors == [want]
    got = [batch.complete(k).to_wire() for k in range(len(batch.deltas))]
    assert got == [d.to_wire() for d in deltas]


def test_a_batch_decodes_as_each_body_alone() -> None:
    rng = random.Random(4)
    bodies = [pack(good(rng, w, ("GET", "POST", "PUT")[:1 + w % 3])) for w in range(50)]
    bodies += list(BAD.values())
    rng.shuffle(bodies)
    batch = decode_deltas(bodies)
    want = [reference(b) for b in bodies]
    assert sorted(batch.errors) == sorted(w for w in want if isinstance(w, str))
    good_ones = [w for w in want if isinstance(w, Delta)]
    assert [batch.complete(k).to_wire() for k in range(len(batch.deltas))] \
        == [d.to_wire() for d in good_ones]
    for d, ops, want_d in zip(batch.deltas, batch.ops, good_ones, strict=True):
        assert [name for name, _ in ops] == list(d.totals.ops)
        for name, js in ops:  # each histogram is where its numbers say
            assert len(js) == 1
            idx, cnt = batch.hists.span(js[0])
            got = dict(zip(idx.tolist(), cnt.tolist(), strict=True))
            assert got == want_d.totals.ops[name].hist.counts


def test_an_empty_batch() -> None:
    batch = decode_deltas([])
    assert batch.deltas == [] and batch.errors == []


def good_open(rng: random.Random, worker: int, names: tuple[str, ...] = ("GET",)) -> Delta:
    """An open-model delta: each name with its service time and schedule lag too."""
    d = good(rng, worker, names)
    for st in d.totals.ops.values():
        sched = st.schedule()
        for _ in range(st.ok):
            sched.service.record(int(rng.lognormvariate(13, 1)))
            sched.lag.record(int(rng.lognormvariate(11, 1)))
        sched.late, sched.dropped = rng.randint(0, 3), rng.randint(0, 3)
    return d


def open_op(ok: int = 2, service: Any = None, lag: Any = None) -> list[Any]:
    pair = [u16([300, 301]), u32([1, 1])]
    return [*op(ok=ok)[:11], [0, 1, *(pair if service is None else service),
                              *(pair if lag is None else lag)], False]


BAD_OPEN: dict[str, bytes] = {
    "service total is not ok": forged(delta_fields(totals=[[open_op(
        service=[u16([300]), u32([1])])], []])),
    "lag out of order": forged(delta_fields(totals=[[open_op(
        lag=[u16([301, 300]), u32([1, 1])])], []])),
    "schedule figures short": forged(delta_fields(totals=[[[*op()[:11], [0, 1], False]], []])),
    "late negative": forged(delta_fields(totals=[
        [[*open_op()[:11], [-1, *open_op()[11][1:]], False]], []])),
}


def test_open_model_deltas_decode_as_each_body_alone() -> None:
    """Open-model deltas (three histograms a name), closed-model ones and bad ones in one
    batch: the same deltas and refusals as ``decode``, and each histogram where its
    numbers say."""
    rng = random.Random(5)
    bodies = [pack(good_open(rng, w, ("GET", "POST")[:1 + w % 2]) if w % 3
                   else good(rng, w)) for w in range(30)]
    bodies += list(BAD_OPEN.values())
    rng.shuffle(bodies)
    batch = decode_deltas(bodies)
    want = [reference(b) for b in bodies]
    assert sorted(batch.errors) == sorted(w for w in want if isinstance(w, str))
    assert len(batch.errors) == len(BAD_OPEN)
    assert not [e for e in batch.errors if "expected an array" in e]  # each for its own flaw
    good_ones = [w for w in want if isinstance(w, Delta)]
    for k, (ops, want_d) in enumerate(zip(batch.ops, good_ones, strict=True)):
        for name, js in ops:
            st = want_d.totals.ops[name]
            hists = [st.hist] if st.sched is None else [st.hist, st.sched.service, st.sched.lag]
            assert len(js) == len(hists)
            for j, h in zip(js, hists, strict=True):
                idx, cnt = batch.hists.span(j)
                assert dict(zip(idx.tolist(), cnt.tolist(), strict=True)) == h.counts
        assert batch.complete(k).to_wire() == want_d.to_wire()

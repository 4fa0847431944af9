"""DELTA bodies decoded by the batch accept and refuse exactly what ``decode`` does."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from protocol.stats import Totals
from protocol.wire.codec import WireError, decode, pack
from protocol.wire.deltas import DELTA_HEADER, NAME, OPEN, decode_deltas
from protocol.wire.messages import MAX_SECOND, Delta
from tests.wire_helpers import u16, u32, u64


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
    got = [batch.delta(k).to_wire() for k in range(len(batch))]
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
    assert [batch.delta(k).to_wire() for k in range(len(batch))] \
        == [d.to_wire() for d in good_ones]
    for k, want_d in enumerate(good_ones):
        rows = batch.rows[batch.first[k]:batch.first[k + 1]]
        assert [row[NAME] for row in rows] == list(want_d.totals.ops)
        for row in rows:  # each histogram is where its numbers say
            assert not row[OPEN] and len(batch.numbers(row)) == 1
            idx, cnt = batch.hists.span(batch.numbers(row)[0])
            got = dict(zip(idx.tolist(), cnt.tolist(), strict=True))
            assert got == want_d.totals.ops[row[NAME]].hist.counts


def test_an_empty_batch() -> None:
    batch = decode_deltas([])
    assert len(batch) == 0 and batch.rows == [] and batch.errors == []


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
    for k, want_d in enumerate(good_ones):
        for row in batch.rows[batch.first[k]:batch.first[k + 1]]:
            st = want_d.totals.ops[row[NAME]]
            hists = [st.hist] if st.sched is None else [st.hist, st.sched.service, st.sched.lag]
            js = batch.numbers(row)
            assert len(js) == len(hists)
            for j, h in zip(js, hists, strict=True):
                idx, cnt = batch.hists.span(j)
                assert dict(zip(idx.tolist(), cnt.tolist(), strict=True)) == h.counts
        assert batch.delta(k).to_wire() == want_d.to_wire()


def with_op(**change: Any) -> list[Any]:
    """An operation's wire fields, some replaced (by their ``OpStats.to_wire`` names)."""
    fields = ["name", "ok", "fail", "sum", "min", "max", "indexes", "counts", "statuses",
              "sent", "received", "sched", "step"]
    out = op()
    for key, value in change.items():
        out[fields.index(key)] = value
    return out


def body_of(*ops: list[Any], errors: Any = None, **change: Any) -> bytes:
    return forged(delta_fields(totals=[list(ops), [] if errors is None else errors], **change))


# Bodies off the common shape: each goes through ``decode``'s own checks, which accept
# some and refuse others, and the batch must do the same (the message included).
ODD: dict[str, bytes] = {
    "status codes": body_of(with_op(statuses=[[200, 1], [503, 2]])),
    "a status code twice": body_of(with_op(statuses=[[200, 1], [200, 2]])),
    "a status code of 99": body_of(with_op(statuses=[[99, 1]])),
    "a status count of 0": body_of(with_op(statuses=[[200, 0]])),
    "status codes not an array": body_of(with_op(statuses={"200": 1})),
    "too many status codes": body_of(with_op(statuses=[[100 + i, 1] for i in range(901)])),
    "a status pair of three": body_of(with_op(statuses=[[200, 1, 1]])),
    "step not a bool": body_of(with_op(step=1)),
    "a named step": body_of(with_op(step=True)),
    "name empty": body_of(with_op(name="")),
    "name not a string": body_of(with_op(name=b"GET")),
    "ok a bool": body_of(with_op(ok=True)),
    "sum a float": body_of(with_op(sum=10.0)),
    "sent negative": body_of(with_op(sent=-1)),
    "huge numbers": body_of(with_op(sum=2**64 - 1, max=2**64 - 1, sent=2**63,
                                    received=2**64 - 1)),
    "no success, any min": body_of(with_op(ok=0, min=12345, indexes=b"", counts=b"")),
    "an operation of twelve": body_of(op()[:12]),
    "an operation not an array": body_of("GET"),  # type: ignore[arg-type]
    "schedule of five": body_of(with_op(sched=[0, 1, b"", b"", b""])),
    "schedule not an array": body_of(with_op(sched="x")),
    "schedule late a float": body_of(with_op(sched=[0.5, 1, u16([300, 301]), u32([1, 1]),
                                                    u16([300, 301]), u32([1, 1])])),
    "schedule histogram not bytes": body_of(with_op(sched=[0, 1, [300, 301], u32([1, 1]),
                                                           u16([300, 301]), u32([1, 1])])),
    "two names, one twice": body_of(op("GET"), op("POST"), op("GET")),
    "a name twice then a bad one": body_of(op("GET"), op("GET"), op(ok=-1)),
    "errors not an array": forged(delta_fields(totals=[[op()], "x"])),
    "totals of three": forged(delta_fields(totals=[[op()], [], []])),
    "operations not an array": forged(delta_fields(totals=[{}, []])),
    "an error of three": body_of(op(), errors=[["GET", "E", 1]]),
    "an error count a bool": body_of(op(), errors=[["GET", "E", "m", True]]),
    "an error message cut": body_of(op(), errors=[["GET", "E", "m" * 400, 1],
                                                  ["GET", "E", "m" * 300 + "x", 2]]),
    "many distinct errors": body_of(op(), errors=[["GET", "E", f"m{i}", 1] for i in range(150)]),
    "an error twice": body_of(op(), errors=[["GET", "E", "m", 1], ["GET", "E", "m", 2]]),
    "cpu an int": forged(delta_fields(cpu_seconds=1)),
    "cpu an int and a bad histogram": forged(delta_fields(cpu_seconds=1, totals=[
        [op(indexes=u16([301, 300]))], []])),
    "seq negative and a bad histogram": forged(delta_fields(seq=-1, totals=[
        [op(indexes=u16([301, 300]))], []])),
    "seq negative and a total off": forged(delta_fields(seq=-1, totals=[[op(ok=3)], []])),
    "seq negative": forged(delta_fields(seq=-1)),
    # ``decode`` checks the fields in the wire order, the totals' histograms included
    "cpu not a number and a name not a string": forged(delta_fields(
        cpu_seconds=None, totals=[[with_op(name=None)], []])),
    "cpu not a number and a histogram not bytes": forged(delta_fields(
        cpu_seconds=None, totals=[[with_op(sched=[0, 1, None, u32([1, 1]), u16([300, 301]),
                                                  u32([1, 1])])], []])),
    "cpu not a number and a total off": forged(delta_fields(cpu_seconds="x",
                                                            totals=[[op(ok=3)], []])),
    "agent not a string and a total off": forged(delta_fields(agent=1,
                                                              totals=[[op(ok=3)], []])),
    "a worker of 2**64 - 1": forged(delta_fields(worker=2**64 - 1)),
    "the second MAX_SECOND": forged(delta_fields(second=MAX_SECOND)),
    "clients a float": forged(delta_fields(clients=1.0)),
    "lag behind an int": forged(delta_fields(sched_lag=0)),
    "a histogram's counts of uint64": body_of(with_op(counts=u64([1, 1]))),
    "a good one then a bad total": body_of(op("GET"), op("POST", ok=3)),
    "a good one then a bad histogram": body_of(op("GET"), op("POST", indexes=b"\x01")),
}


def same_as_decode(bodies: list[bytes]) -> None:
    """The batch accepts and refuses exactly what ``decode`` does, with the same
    messages (a body refused for a histogram is reported after the others), and the
    deltas it accepts are ``decode``'s, in order."""
    batch = decode_deltas(bodies)
    want = [reference(b) for b in bodies]
    assert sorted(batch.errors) == sorted(w for w in want if isinstance(w, str))
    assert [batch.delta(k).to_wire() for k in range(len(batch))] \
        == [w.to_wire() for w in want if isinstance(w, Delta)]


@pytest.mark.parametrize("case", list(ODD))
def test_a_body_off_the_common_shape_is_judged_as_decode_judges_it(case: str) -> None:
    rng = random.Random(6)
    bodies = [pack(good(rng, w, ("GET", "POST"))) for w in range(3)]
    bodies.insert(1, ODD[case])
    same_as_decode(bodies)


def test_every_odd_body_in_one_batch() -> None:
    bodies = list(ODD.values()) + list(BAD.values()) + list(BAD_OPEN.values())
    random.Random(7).shuffle(bodies)
    same_as_decode(bodies)
    assert 0 < len(decode_deltas(bodies)) < len(bodies)  # some of each


# Any value msgpack carries, for a field of a forged body.
wire_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers(-(2**63), 2**64 - 1) | hs.floats()
    | hs.text(max_size=5) | hs.binary(max_size=8),
    lambda inner: hs.lists(inner, max_size=4), max_leaves=8)


def paths(obj: Any, at: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every place in a nested array (bytes and strings are leaves)."""
    out = [at]
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, (*at, i))
    return out


def replaced(obj: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    out = list(obj)
    out[path[0]] = replaced(obj[path[0]], path[1:], value)
    return out


@settings(max_examples=300, deadline=None)
@given(data=hs.data())
def test_a_body_changed_anywhere_is_judged_as_decode_judges_it(data: hs.DataObject) -> None:
    rng = random.Random(data.draw(hs.integers(0, 1000)))
    base = good_open(rng, 1, ("GET", "POST")) if data.draw(hs.booleans()) \
        else good(rng, 1, ("GET", "POST"))
    fields = base.to_wire()
    for _ in range(data.draw(hs.integers(1, 3))):
        path = data.draw(hs.sampled_from(paths(fields)))
        fields = replaced(fields, path, data.draw(wire_values))
    others = [pack(good(rng, w)) for w in range(2)]
    same_as_decode([others[0], forged(fields), others[1]])

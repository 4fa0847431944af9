"""protocol.wire.codec and protocol.wire.messages: round trips and refusal of bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.stats import Totals
from protocol.wire import codec
from protocol.wire import messages as m
from protocol.wire.codec import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    REFUSED_TYPE,
    Message,
    Refused,
    VersionMismatch,
    WireError,
    decode,
    decode_joined,
    decode_stats,
    encode,
    encode_joined,
    encode_refused,
    encode_stats,
    expect,
)

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=150)
RUN_ID = "0123456789abcdef"


def totals() -> Totals:
    t = Totals()
    rng = random.Random(3)
    for name in ("GET /", "Client"):
        op = t.op(name)
        for _ in range(100):
            op.record_ok(int(rng.lognormvariate(15, 2)))
        op.fail = 2
        t.add_error((name, "TimeoutError", "timed out"), 2)
    t.add_error(("GET /", "ValueError", "x" * 300), 1)
    return t


def job(**changes: Any) -> m.Job:
    values: dict[str, Any] = dict(
        run_id=RUN_ID, host="http://127.0.0.1:8080/test", class_file="client.py",
        class_name="Bench", custom_conf={"test_data_file": "./data/d.json", "n": [1, 2.5, None],
                                         "nested": {"k": b"\x00\xff"}},
        users=7, hatch_rate=2.5, run_time=90.0, wait_time=0.0, stop_grace=10.0,
        total_workers=4, worker_ids=[0, 3],
        bundle=[m.BundleFile("client.py", 0o644, b"print('hi')\n"),
                m.BundleFile("data/d.json", 0o600, b"{}")],
    )
    values.update(changes)
    return m.Job(**values)


def examples() -> dict[type[Message], Message]:
    return {
        m.Register: m.Register(name="agent-1", hostname="box", cores=8, workers=8,
                               version="0.1.0", pid=1234, max_message=64 << 20, token="t0k"),
        m.Welcome: m.Welcome(accepted=True, reason="", stats_port=40123, master_time=1.7e9),
        m.Heartbeat: m.Heartbeat(sent_at=1.5, echo=0.0),
        m.BundleFile: m.BundleFile(path="a/b.txt", mode=0o755, data=b"\x00\x01" * 10),
        m.Job: job(),
        m.AgentReady: m.AgentReady(workers=4, clock_offset=-0.25, rtt=0.001,
                                   notes=["agent a, worker 1: 5000 clients need ..."]),
        m.WorkerReady: m.WorkerReady(worker=1, notes=[]),
        m.JobFailed: m.JobFailed(worker=2, error="Traceback...\nImportError: x"),
        m.JobRefused: m.JobRefused(error="agent a: bundle refused: '..' is refused"),
        m.ClientsFailing: m.ClientsFailing(worker=0,
                                           error="every call raised HttpInvalidUrl: notaurl"),
        m.Start: m.Start(t0=1_700_000_000.25),
        m.Stop: m.Stop(reason="run time reached"),
        m.Abort: m.Abort(reason="second Ctrl-C"),
        m.Final: m.Final(worker=3, totals=totals(), last_end=12.5, clients=10, aborted=False,
                         start_lag=0.002, stopped_at=12.0, grace=0.5, grace_finished=3,
                         grace_cancelled=1),
        m.FinalAck: m.FinalAck(worker=3),
        m.WorkerLost: m.WorkerLost(worker=2, exitcode=-9, detail="killed"),
        m.Leaving: m.Leaving(reason="SIGTERM"),
        m.RunDone: m.RunDone(run_id=RUN_ID),
        m.RunDoneAck: m.RunDoneAck(run_id=RUN_ID),
        m.Farewell: m.Farewell(reason="recorded"),
        m.WorkerJob: m.WorkerJob(job=job(bundle=[]), worker=3, agent="agent-1",
                                 stats_endpoint="tcp://127.0.0.1:5557", run_dir="/tmp/x",
                                 curve=[b"P" * 40, b"S" * 40, b"M" * 40]),
        m.Hello: m.Hello(agent="agent-1", worker=0),
        m.Delta: m.Delta(agent="agent-1", worker=1, seq=5, second=4, clients=3,
                         totals=totals(), cpu_seconds=0.75, loop_lag=0.002),
    }


def message_classes() -> list[type[Message]]:
    return sorted(codec._REGISTRY.values(), key=lambda c: c.TYPE)


def same(a: Message, b: Message) -> bool:
    """Field-wise equality; Totals compare by their wire form."""
    if type(a) is not type(b):
        return False
    return a.to_wire() == b.to_wire()


def frames_for(msg_type: int, body: bytes, version: int = PROTOCOL_VERSION) -> list[bytes]:
    return [HEADER.pack(MAGIC, version, msg_type), body]


def body_of(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# -- round trips ---------------------------------------------------------------------------


def test_every_message_class_has_an_example() -> None:
    assert set(examples()) == set(message_classes())
    codes = [c.TYPE for c in message_classes()]
    assert len(codes) == len(set(codes)) and REFUSED_TYPE not in codes


@pytest.mark.parametrize("cls", message_classes(), ids=lambda c: c.__name__)
def test_round_trip_control(cls: type[Message]) -> None:
    msg = examples()[cls]
    frames = encode(msg)
    assert len(frames) == 2 and len(frames[0]) == HEADER.size
    assert frames[0][:2] == MAGIC and frames[0][2] == PROTOCOL_VERSION and frames[0][3] == cls.TYPE
    back = decode(frames)
    assert type(back) is cls
    assert same(back, msg)
    assert expect(back, cls) is back


@pytest.mark.parametrize("cls", message_classes(), ids=lambda c: c.__name__)
def test_round_trip_stats_and_joined(cls: type[Message]) -> None:
    msg = examples()[cls]
    topic = RUN_ID.encode()
    frames = encode_stats(topic, msg)
    assert len(frames) == 3 and frames[0] == topic
    assert same(decode_stats(frames, topic), msg)
    assert same(decode_joined(encode_joined(msg)), msg)


def test_round_trip_keeps_values_exactly() -> None:
    j = decode(encode(job()))
    assert isinstance(j, m.Job)
    assert j.custom_conf == job().custom_conf
    assert j.bundle == job().bundle
    assert j.worker_ids == [0, 3] and j.hatch_rate == 2.5
    d = decode(encode(examples()[m.Delta]))
    assert isinstance(d, m.Delta)
    assert d.totals.errors == totals().errors
    assert {n: s.hist.counts for n, s in d.totals.ops.items()} == {
        n: s.hist.counts for n, s in totals().ops.items()}
    assert d.totals.ops["GET /"].min_ns == totals().ops["GET /"].min_ns
    w = decode(encode(m.Welcome(False, "full", 0, 1.0)))
    assert isinstance(w, m.Welcome) and w.accepted is False and w.reason == "full"
    # an int on the wire is fine where a float is expected
    h = decode(frames_for(m.Heartbeat.TYPE, body_of([1, 2])))
    assert isinstance(h, m.Heartbeat) and h.sent_at == 1.0 and isinstance(h.sent_at, float)


def test_expect_names_both_types() -> None:
    with pytest.raises(WireError, match="expected Start, got Stop"):
        expect(m.Stop("x"), m.Start)


# -- versions and refusals -----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 255])
def test_other_version_raises_version_mismatch(version: int) -> None:
    _, body = encode(m.Start(1.0))
    with pytest.raises(VersionMismatch) as info:
        decode(frames_for(m.Start.TYPE, body, version))
    e = info.value
    assert isinstance(e, WireError)
    assert e.theirs == version and e.ours == PROTOCOL_VERSION
    assert e.msg_type == m.Start.TYPE and e.body == body
    assert str(version) in str(e) and str(PROTOCOL_VERSION) in str(e)


def test_version_is_checked_before_the_body() -> None:
    # a future version's body need not be readable by us
    with pytest.raises(VersionMismatch):
        decode(frames_for(m.Start.TYPE, b"\xc1garbage", PROTOCOL_VERSION + 1))
    with pytest.raises(VersionMismatch):
        decode(frames_for(200, b"", PROTOCOL_VERSION + 1))


@pytest.mark.parametrize("version", [0, 1, 2, 77, 255])
def test_refused_is_readable_whatever_the_version(version: int) -> None:
    header, body = encode_refused("agent version 0.9 is too old")
    assert header[3] == REFUSED_TYPE
    frames = [header[:2] + bytes([version]) + header[3:], body]
    with pytest.raises(Refused, match=r"agent version 0\.9 is too old"):
        decode(frames)
    with pytest.raises(Refused):
        decode_joined(b"".join(frames))


def test_refused_reason_is_cut_and_a_bad_reason_is_still_a_refusal() -> None:
    with pytest.raises(Refused) as info:
        decode(encode_refused("r" * 100_000))
    assert len(str(info.value)) == 2000
    with pytest.raises(Refused, match="no reason"):
        decode(frames_for(REFUSED_TYPE, body_of(5)))
    with pytest.raises(WireError):
        decode(frames_for(REFUSED_TYPE, b"\xc1"))


# -- framing and body refusals -------------------------------------------------------------


def start_frames() -> list[bytes]:
    return encode(m.Start(1.0))


FRAME_CASES: dict[str, Callable[[], Any]] = {
    "no frames": lambda: decode([]),
    "one frame": lambda: decode(start_frames()[:1]),
    "three frames": lambda: decode([*start_frames(), b""]),
    "short header": lambda: decode([start_frames()[0][:3], start_frames()[1]]),
    "long header": lambda: decode([start_frames()[0] + b"\x00", start_frames()[1]]),
    "empty header": lambda: decode([b"", start_frames()[1]]),
    "bad magic": lambda: decode([b"XT" + start_frames()[0][2:], start_frames()[1]]),
    "unknown type": lambda: decode(frames_for(250, body_of([]))),
    "empty body": lambda: decode(frames_for(m.Start.TYPE, b"")),
    "truncated msgpack": lambda: decode(frames_for(m.Job.TYPE, encode(job())[1][:-5])),
    "garbage": lambda: decode(frames_for(m.Start.TYPE, b"\xc1\xc1\xc1")),
    "trailing bytes": lambda: decode(frames_for(m.Start.TYPE, start_frames()[1] + b"\x01")),
    "ext type": lambda: decode(frames_for(m.Heartbeat.TYPE, body_of([msgpack.ExtType(5, b"ab"),
                                                                    1.0]))),
    "short joined": lambda: decode_joined(b"LT\x01"),
    "stats two frames": lambda: decode_stats(start_frames(), RUN_ID.encode()),
    "stats wrong topic": lambda: decode_stats(encode_stats(b"fedcba9876543210", m.Start(1.0)),
                                              RUN_ID.encode()),
    "stats topic prefix": lambda: decode_stats(encode_stats(RUN_ID.encode() + b"x",
                                                            m.Start(1.0)), RUN_ID.encode()),
}


@pytest.mark.parametrize("case", list(FRAME_CASES))
def test_bad_frames_raise_wire_error(case: str) -> None:
    with pytest.raises(WireError) as info:
        FRAME_CASES[case]()
    assert type(info.value) is WireError


def test_body_over_the_type_max_size() -> None:
    big = "x" * (m.Stop.MAX_SIZE + 1)
    frames = frames_for(m.Stop.TYPE, body_of([big]))
    with pytest.raises(WireError, match="over the limit"):
        decode(frames)
    # a type with a larger MAX_SIZE accepts a body of that size
    jf = encode(job(bundle=[m.BundleFile("a", 0o644, b"x" * (m.Stop.MAX_SIZE * 4))]))
    assert isinstance(decode(jf), m.Job)
    over = frames_for(m.Job.TYPE, b"\xc6" + (m.Job.MAX_SIZE).to_bytes(4, "big")
                      + b"\x00" * m.Job.MAX_SIZE)
    with pytest.raises(WireError, match="over the limit"):
        decode(over)


def test_body_over_an_explicit_limit() -> None:
    frames = encode(job(bundle=[m.BundleFile("a", 0o644, b"x" * 5000)]))
    assert isinstance(decode(frames, limit=len(frames[1])), m.Job)
    with pytest.raises(WireError, match="over the limit"):
        decode(frames, limit=len(frames[1]) - 1)
    with pytest.raises(WireError, match="over the limit"):
        decode_joined(b"".join(frames), limit=1000)
    # an explicit limit never raises the type's own
    big = frames_for(m.Stop.TYPE, body_of(["x" * (m.Stop.MAX_SIZE + 10)]))
    with pytest.raises(WireError, match="over the limit"):
        decode(big, limit=10 * m.Stop.MAX_SIZE)


def test_deeply_nested_body() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(WireError):
        decode(frames_for(m.Job.TYPE, deep))
    with pytest.raises(WireError):
        decode(frames_for(m.Heartbeat.TYPE, b"\x92" + b"\x91" * 3000 + b"\xc0" + b"\x00"))
    deep_map = b"\x81\xa1k" * 5000 + b"\xc0"
    with pytest.raises(WireError):
        decode(frames_for(m.Job.TYPE, deep_map))


def wire_of(msg: Message) -> list[Any]:
    return msgpack.unpackb(encode(msg)[1], raw=False)  # type: ignore[no-any-return]


def field_index(cls: type[Message], name: str) -> int:
    return [f.name for f in dataclasses.fields(cls)].index(name)  # type: ignore[arg-type]


def replaced(msg: Message, name: str, value: Any) -> list[bytes]:
    obj = wire_of(msg)
    obj[field_index(type(msg), name)] = value
    return frames_for(msg.TYPE, body_of(obj))


FIELD_CASES: dict[str, Callable[[], list[bytes]]] = {
    "too few fields": lambda: frames_for(m.Start.TYPE, body_of([])),
    "too many fields": lambda: frames_for(m.Start.TYPE, body_of([1.0, 2.0])),
    "map instead of array": lambda: frames_for(m.Start.TYPE, body_of({"t0": 1.0})),
    "scalar body": lambda: frames_for(m.Start.TYPE, body_of(1.0)),
    "str for int": lambda: replaced(examples()[m.AgentReady], "workers", "4"),
    "bool for int": lambda: replaced(examples()[m.AgentReady], "workers", True),
    "float for int": lambda: replaced(examples()[m.AgentReady], "workers", 4.0),
    "int for bool": lambda: replaced(examples()[m.Welcome], "accepted", 1),
    "str for float": lambda: replaced(examples()[m.Start], "t0", "1.0"),
    "bool for float": lambda: replaced(examples()[m.Start], "t0", True),
    "bytes for str": lambda: replaced(examples()[m.Stop], "reason", b"x"),
    "str for bytes": lambda: replaced(examples()[m.BundleFile], "data", "x"),
    "nil for str": lambda: replaced(examples()[m.Stop], "reason", None),
    "int for list": lambda: replaced(job(), "worker_ids", 3),
    "str in int list": lambda: replaced(job(), "worker_ids", [0, "1"]),
    "map for list": lambda: replaced(job(), "bundle", {}),
    "bad nested bundle file": lambda: replaced(job(), "bundle", [["a", 0o644]]),
    "list for map": lambda: replaced(job(), "custom_conf", [1]),
    "int map keys": lambda: replaced(job(), "custom_conf", {1: "x"}),
    "bytes map keys": lambda: replaced(job(), "custom_conf", {b"k": "x"}),
    "nested job not a list": lambda: replaced(examples()[m.WorkerJob], "job", "job"),
    "bad totals": lambda: replaced(examples()[m.Final], "totals", [[], [["n", "t", "m", 0]]]),
    "totals not a list": lambda: replaced(examples()[m.Delta], "totals", 5),
    "totals with duplicate ops": lambda: replaced(
        examples()[m.Delta], "totals",
        [[["a", 1, 0, 5, 5, 5, [5], [1]], ["a", 1, 0, 5, 5, 5, [5], [1]]], []]),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_bad_fields_raise_wire_error(case: str) -> None:
    frames = FIELD_CASES[case]()
    with pytest.raises(WireError):
        decode(frames)


INVALID_VALUES: dict[str, Callable[[], list[bytes]]] = {
    "Job.run_id too short": lambda: replaced(job(), "run_id", "abc"),
    "Job.run_id too long": lambda: replaced(job(), "run_id", RUN_ID + "0"),
    "Job.run_id not ascii": lambda: replaced(job(), "run_id", "é" * 16),
    "Job.users negative": lambda: replaced(job(), "users", -1),
    "Job.hatch_rate zero": lambda: replaced(job(), "hatch_rate", 0.0),
    "Job.hatch_rate nan": lambda: replaced(job(), "hatch_rate", math.nan),
    "Job.run_time negative": lambda: replaced(job(), "run_time", -1.0),
    "Job.run_time nan": lambda: replaced(job(), "run_time", math.nan),
    "Job.total_workers zero": lambda: replaced(job(), "total_workers", 0),
    "Job.worker_ids out of range": lambda: replaced(job(), "worker_ids", [4]),
    "Job.worker_ids negative": lambda: replaced(job(), "worker_ids", [-1]),
    "Welcome.stats_port 70000": lambda: replaced(examples()[m.Welcome], "stats_port", 70000),
    "Welcome.stats_port -1": lambda: replaced(examples()[m.Welcome], "stats_port", -1),
    "Register.workers 0": lambda: replaced(examples()[m.Register], "workers", 0),
    "Register.workers 5000": lambda: replaced(examples()[m.Register], "workers", 5000),
    "Register.name empty": lambda: replaced(examples()[m.Register], "name", ""),
    "Register.name too long": lambda: replaced(examples()[m.Register], "name", "n" * 201),
    "Register.cores negative": lambda: replaced(examples()[m.Register], "cores", -1),
    "Delta.seq negative": lambda: replaced(examples()[m.Delta], "seq", -1),
    "Delta.clients negative": lambda: replaced(examples()[m.Delta], "clients", -3),
    "Delta.second 0": lambda: replaced(examples()[m.Delta], "second", 0),
    "Delta.second past MAX_SECOND": lambda: replaced(examples()[m.Delta], "second",
                                                     m.MAX_SECOND + 1),
    "Delta.cpu_seconds negative": lambda: replaced(examples()[m.Delta], "cpu_seconds", -0.5),
    "Delta.loop_lag negative": lambda: replaced(examples()[m.Delta], "loop_lag", -0.001),
    "WorkerJob with a bad job": lambda: replaced(
        examples()[m.WorkerJob], "job", ["x", *wire_of(job())[1:]]),
}


@pytest.mark.parametrize("case", list(INVALID_VALUES))
def test_invalid_values_raise_wire_error(case: str) -> None:
    frames = INVALID_VALUES[case]()
    with pytest.raises(WireError) as info:
        decode(frames)
    assert type(info.value) is WireError


def test_error_names_the_field() -> None:
    with pytest.raises(WireError, match=r"AgentReady\.workers"):
        decode(replaced(examples()[m.AgentReady], "workers", "4"))
    with pytest.raises(WireError, match="stats_port"):
        decode(replaced(examples()[m.Welcome], "stats_port", 70000))


# -- fuzz ----------------------------------------------------------------------------------

ALL_TYPES = [REFUSED_TYPE, *(c.TYPE for c in message_classes()), 99]

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=5) | st.binary(max_size=3), children, max_size=4),
    max_leaves=25,
)


def only_wire_errors(frames: list[bytes]) -> None:
    with contextlib.suppress(WireError):
        decode(frames)
    with contextlib.suppress(WireError):
        decode_joined(b"".join(frames))


@FAST
@given(st.sampled_from(ALL_TYPES), st.binary(max_size=200))
def test_fuzz_random_bytes(msg_type: int, body: bytes) -> None:
    only_wire_errors(frames_for(msg_type, body))


@FAST
@given(st.sampled_from(ALL_TYPES), msgpack_values)
def test_fuzz_random_msgpack_values(msg_type: int, value: Any) -> None:
    only_wire_errors(frames_for(msg_type, body_of(value)))


@FAST
@given(st.sampled_from(message_classes()), st.data())
def test_fuzz_arrays_of_the_right_length(cls: type[Message], data: st.DataObject) -> None:
    n = len(dataclasses.fields(cls))  # type: ignore[arg-type]
    value = data.draw(st.lists(msgpack_values, min_size=n, max_size=n))
    only_wire_errors(frames_for(cls.TYPE, body_of(value)))


@FAST
@given(st.sampled_from(message_classes()), st.data())
def test_fuzz_one_field_changed(cls: type[Message], data: st.DataObject) -> None:
    obj = wire_of(examples()[cls])
    i = data.draw(st.integers(min_value=0, max_value=len(obj) - 1))
    obj[i] = data.draw(msgpack_values)
    only_wire_errors(frames_for(cls.TYPE, body_of(obj)))


@FAST
@given(st.sampled_from(message_classes()), st.data())
def test_fuzz_corrupted_bytes(cls: type[Message], data: st.DataObject) -> None:
    body = bytearray(encode(examples()[cls])[1])
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        pos = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[pos] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(body)))
    only_wire_errors(frames_for(cls.TYPE, bytes(body[:cut])))
    only_wire_errors(frames_for(cls.TYPE, bytes(body)))


@FAST
@given(st.binary(max_size=40), st.binary(max_size=40))
def test_fuzz_headers(header: bytes, body: bytes) -> None:
    only_wire_errors([header, body])
    with contextlib.suppress(WireError):
        decode_stats([RUN_ID.encode(), header, body], RUN_ID.encode())

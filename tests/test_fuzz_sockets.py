"""Bad input at the live sockets of real processes (issue 17, "Bad input").

The decoder alone is fuzzed in test_codec.py. Here hypothesis-generated frames go over
loopback to a real master's control socket and stats socket during a real run, and to
a real agent's control socket from a fake master. Each test checks what a user would
notice: the process stays up and answers; the run's final totals are exactly what the
target served; memory stays bounded; bad messages are logged and dropped, with no
traceback; an agent imports and writes nothing outside a job's bundle.

Hypothesis only generates here (no shrinking, no example database, no deadline): each
example is a few messages sent at a live process, checked at once, so a failure names
the frames that broke it. Every test has a hard wall-clock bound (``bounded``), and
sends for a bounded time and number of examples.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from loadagent.status import status_dir
from loadmaster.coordinator import CONTROL_LIMIT
from protocol.stats import Totals
from protocol.wire import messages as m
from protocol.wire.codec import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Message,
    Refused,
    WireError,
    decode,
    encode,
    pack,
)
from protocol.wire.deltas import DELTA_HEADER
from protocol.wire.limits import JOB_MIN, MIB, SOCKET_SLACK, STATS_SOCKET_MAX
from tests.e2e_helpers import (
    Agents,
    LineReader,
    Result,
    Target,
    free_port,
    start_agent,
    started_master,
    write_job,
)

AGENT = "fz"  # the real agent's name: forged messages name it and its worker 0
RUN_TIME = 8  # seconds of load in the master tests
OTHER_RUN = "fedcba9876543210"
STATS_LINE = re.compile(r"run ([0-9a-f]{16}): .*stats on port (\d+)")
RSS_LIMIT_MB = 400  # the master's resident memory, at any time
RSS_GROWTH_MB = 100  # and what it keeps of a barrage
HELLOS = 2000  # of 60 KB each, from workers not in the plan
HELLOS_KEPT_MB = 50  # the master's growth past the first 120 MB's peak, over the second
MESSAGE_TYPES = sorted(cls.TYPE for cls in vars(m).values() if isinstance(cls, type)
                       and issubclass(cls, Message) and "TYPE" in vars(cls))


def live(examples: int) -> settings:
    """Hypothesis settings for examples thrown at a live process: generation only."""
    return settings(max_examples=examples, deadline=None, phases=[Phase.generate],
                    database=None, suppress_health_check=list(HealthCheck))


def rounds(test: Callable[[], None], until: float, most: int = 40) -> None:
    """Run a hypothesis test (a few examples a run) again and again until ``until``
    (monotonic), at most ``most`` times. The examples never look at the clock: one that
    drew differently by the time would be inconsistent data generation to hypothesis."""
    for _ in range(most):
        if time.monotonic() > until:
            return
        test()


# -- time, memory, sockets ------------------------------------------------------------------
class OverTime(Exception):
    """The test ran past its wall-clock bound."""


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Fail the test (and run its clean-up) once it has run ``seconds``."""
    def expire(signum: int, frame: Any) -> None:
        raise OverTime(f"the test ran over its wall-clock bound of {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssWatch:
    """A process's resident memory: before a barrage (``baseline``), its ``peak`` (sampled
    every 0.1 s in a thread) and once the barrage is over (``after``), in MB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_mb(pid)
        self.peak = self.baseline
        self.after = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb(self.pid))

    def settle(self, seconds: float = 1.0) -> float:
        """Note what the process kept, once what was queued for it is read."""
        time.sleep(seconds)
        self.after = rss_mb(self.pid)
        return self.after

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def check(self, growth: float = RSS_GROWTH_MB) -> None:
        """Under RSS_LIMIT_MB throughout; at most ``growth`` MB more kept after."""
        text = (f"master RSS {self.baseline:.0f} MB before the barrage, a peak of "
                f"{self.peak:.0f} MB, {self.after:.0f} MB after")
        assert self.peak < RSS_LIMIT_MB and self.after - self.baseline < growth, text

    def __str__(self) -> str:
        return f"{self.baseline:.0f} MB, peak {self.peak:.0f} MB, after {self.after:.0f} MB"


@contextlib.contextmanager
def zmq_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A context whose sockets are all closed with linger 0, then terminated."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str,
           routing_id: bytes = b"") -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    sock.linger = 0
    if routing_id:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if kind == zmq.PUB:
        sock.sndhwm = 100_000
    sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Send without blocking: a message the peer's queue cannot take is dropped."""
    with contextlib.suppress(zmq.Again):
        sock.send_multipart(frames, flags=zmq.NOBLOCK)


def recv_all(sock: zmq.Socket[bytes]) -> list[list[bytes]]:
    out = []
    with contextlib.suppress(zmq.Again):
        while True:
            out.append(sock.recv_multipart(flags=zmq.NOBLOCK))
    return out


def wait_pattern(reader: LineReader, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        for line in list(reader.lines):
            found = pattern.search(line)
            if found:
                return found
        assert time.monotonic() < deadline, f"{pattern.pattern!r} not seen in:\n" \
                                            + "".join(reader.lines)
        time.sleep(0.05)


# -- hostile values and frames --------------------------------------------------------------
def header(msg_type: int, version: int = PROTOCOL_VERSION) -> bytes:
    return HEADER.pack(MAGIC, version, msg_type)


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def u16(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}H", *values)


def u32(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def u64(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def op_wire(name: str = "POST", ok: int = 0, fail: int = 0, wide: bool = False) -> list[Any]:
    """One operation's wire fields; its ``ok`` calls all in one bucket."""
    indexes, counts = (u16([300]), (u64 if wide else u32)([ok])) if ok else (b"", b"")
    return [name, ok, fail, 300 * ok, 300 if ok else 0, 300 if ok else 0, indexes, counts,
            [], 0, 0, [], False]


def totals_of(*ops: list[Any]) -> Totals:
    return Totals.from_wire([list(ops), []])


FORGED_TOTALS = Totals.from_wire([[op_wire("POST", ok=10**9, fail=10**9)],
                                  [["POST", "ValueError", "forged", 5]]])


def control_samples() -> list[Message]:
    """A message of every kind, forged as the real agent would send it (worker 0, the
    agent's name) or with absurd values: from an unregistered peer, none may count."""
    job = m.Job(run_id=OTHER_RUN, host="http://127.0.0.1:1/", class_file="c.py",
                class_name="", custom_conf={"k": [1, None]}, users=1, hatch_rate=1.0,
                run_time=1.0, wait_time=0.0, stop_grace=0.0, total_workers=1, worker_ids=[0],
                bundle=[m.BundleFile(path="c.py", mode=0o644, data=b"")])
    return [
        m.Register(name=AGENT, hostname="h", cores=1, workers=4096, version="0", pid=1,
                   max_message=JOB_MIN, token="t"),
        m.Register(name="intruder", hostname="h", cores=2**63 - 1, workers=1, version="9" * 300,
                   pid=2**63 - 1, max_message=2**63 - 1, token=""),
        m.Heartbeat(sent_at=time.time(), echo=0.0),
        m.Heartbeat(sent_at=1e308, echo=-1e308),
        m.AgentReady(workers=1, clock_offset=1e300, rtt=-1.0, notes=["n" * 2000] * 20),
        m.JobFailed(worker=0, error="forged failure"),
        m.JobRefused(error="forged refusal"),
        m.ClientsFailing(worker=0, error="forged: every client fails"),
        m.Final(worker=0, totals=FORGED_TOTALS, last_end=1.0, clients=10**9, aborted=False,
                start_lag=0.0, stopped_at=1.0, grace=0.0, grace_finished=0, grace_cancelled=0),
        m.FinalAck(worker=0),
        m.WorkerLost(worker=0, exitcode=-9, detail="forged loss"),
        m.Leaving(reason="forged leave"),
        m.RunDoneAck(run_id=OTHER_RUN),
        m.Hello(agent=AGENT, worker=0),
        m.Delta(agent=AGENT, worker=0, seq=1, second=1, clients=4, totals=FORGED_TOTALS,
                cpu_seconds=0.1, loop_lag=0.0),
        m.WorkerReady(worker=0, notes=[]),
        m.Welcome(accepted=True, reason="", stats_port=1, master_time=0.0),
        m.Start(t0=0.0), m.Stop(reason="forged"), m.Abort(reason="forged"),
        m.RunDone(run_id=OTHER_RUN), m.Farewell(reason="forged"),
        m.BundleFile(path="../x.py", mode=0o777, data=b"x"),
        job,
    ]


CONTROL_SAMPLES = control_samples()
HOSTILE: list[Any] = [
    0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 10**12,
    0.0, -0.0, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan, True, False, None,
    "", "x" * 300, "\x00", "é" * 500, "../../etc/passwd", "/etc/passwd", OTHER_RUN, AGENT,
    b"", b"\x00" * 64, b"\xff" * 1000, [], [None], [[[[[[]]]]]], list(range(200)), {},
    {"a": 1}, {"k" * 40: [1.5, b""]},
]
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)
hostile_values = st.sampled_from(HOSTILE) | msgpack_values


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, each drawn in proportion to its weight."""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` with a few bytes flipped, set, inserted, deleted, repeated or cut."""
    b = bytearray(body)
    for _ in range(draw(weighted((4, st.just(1)), (2, st.just(2)), (1, st.integers(3, 5))))):
        kind = draw(st.sampled_from(("flip", "flip", "set", "set", "insert", "delete", "repeat",
                                     "cut")))
        pos = draw(st.integers(0, max(0, len(b) - 1)))
        if kind == "flip" and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and b:
            b[pos] = draw(st.sampled_from((0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xD3, 0xDB,
                                           0xDD, 0xDF, 0xFF)) | st.integers(0, 255))
        elif kind == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete":
            del b[pos:pos + draw(st.integers(1, 9))]
        elif kind == "repeat":
            b[pos:pos] = b[pos:pos + draw(st.integers(1, 16))] * draw(st.integers(1, 3))
        else:
            del b[pos:]
    return bytes(b)


@st.composite
def replaced(draw: st.DrawFn, msg: Message) -> bytes:
    """``msg``'s wire fields with one or two values, at any depth, replaced."""
    wire = msgpack.unpackb(pack(msg), raw=False, strict_map_key=False)
    for _ in range(draw(st.integers(1, 2))):
        holder: Any = wire
        index = draw(st.integers(0, len(wire) - 1))
        # go deeper into nested arrays now and then (the totals of a FINAL or a DELTA)
        while isinstance(holder[index], list) and holder[index] and draw(st.booleans()):
            holder = holder[index]
            index = draw(st.integers(0, len(holder) - 1))
        holder[index] = copy.deepcopy(draw(hostile_values))  # HOSTILE is shared
    return packb(wire)


def sample_frames(samples: list[Message], headers: st.SearchStrategy[bytes]
                  ) -> st.SearchStrategy[list[bytes]]:
    """Control frames, mostly real messages of ``samples`` with their body mutated or a
    field replaced; some unchanged (forgeries), some under another header, with random
    bodies, or random frames; too few or too many frames."""
    sampled = st.sampled_from(samples)
    return weighted(
        (25, sampled.flatmap(lambda s: st.tuples(st.just(header(s.TYPE)), mutated(pack(s))))
         .map(list)),
        (25, sampled.flatmap(lambda s: st.tuples(st.just(header(s.TYPE)), replaced(s)))
         .map(list)),
        (15, sampled.map(encode)),
        (10, st.tuples(headers, st.binary(max_size=300)).map(list)),
        (10, st.tuples(headers, sampled.map(pack)).map(list)),
        (10, st.lists(st.binary(max_size=200), min_size=1, max_size=3)),
        (3, st.tuples(sampled.map(encode), st.lists(st.binary(max_size=20), min_size=1,
                                                     max_size=2)).map(lambda t: [*t[0], *t[1]])),
        (2, sampled.map(lambda s: encode(s)[:1])),
    )


master_headers = weighted(
    (6, st.sampled_from([0, *MESSAGE_TYPES, 99, 255]).map(header)),
    (2, st.builds(header, st.integers(0, 255), st.integers(0, 255))),  # another version too
    (2, st.binary(max_size=8)),
)
control_frames = sample_frames(CONTROL_SAMPLES, master_headers)


# -- a real run ------------------------------------------------------------------------------
@dataclass
class LiveRun:
    proc: Any
    out: LineReader
    err: LineReader
    control: str  # the master's control endpoint
    run_id: str
    stats_port: int
    planned_at: float  # monotonic time of the "stats on port" line

    def result(self, timeout: float) -> Result:
        code = self.proc.wait(timeout)
        return Result(code, self.out.text(), self.err.text())


@contextlib.contextmanager
def live_run(tmp_path: Path, tag: str, target: Target) -> Iterator[LiveRun]:
    """A master (--agents 1, plaintext on loopback) and one `loadagent start` daemon,
    running a test of RUN_TIME seconds against ``target``; the agent must exit 0 after."""
    port = free_port()
    agents = Agents(tag, port, tmp_path)
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": RUN_TIME,
                                "agent_timeout": 20})
    try:
        agents.start(AGENT)
        with started_master(tmp_path, conf, tag, "--agents", "1", "--bind",
                            f"127.0.0.1:{port}", "--log-level", "info") as proc:
            out, err = LineReader(proc.stdout), LineReader(proc.stderr)
            found = wait_pattern(err, STATS_LINE, 30)
            try:
                yield LiveRun(proc, out, err, f"tcp://127.0.0.1:{port}", found.group(1),
                              int(found.group(2)), time.monotonic())
            finally:  # shown when the test fails
                lines = [line for line in err.lines if "agent probe" not in line]
                print(f"--- master stderr, but the probe's ---\n{''.join(lines)[-6000:]}\n"
                      f"--- master stdout ---\n{''.join(out.lines)[-3000:]}")
    finally:
        codes = agents.stop_all()
    assert codes == {AGENT: 0}, agents.logs[AGENT].text(1)


class Probe:
    """A peer that REGISTERs with the master and must be told, at once, to stay idle
    (a run is in progress) without learning anything: proof the master's loop answers."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock = socket(ctx, zmq.DEALER, endpoint)
        self.register = encode(m.Register(name="probe", hostname="h", cores=1, workers=1,
                                          version="0", pid=1, max_message=JOB_MIN, token=""))

    def check(self, timeout: float = 5.0) -> None:
        self.sock.send_multipart(self.register)
        assert self.sock.poll(int(timeout * 1000)), "the master did not answer a REGISTER"
        reply = decode(self.sock.recv_multipart())
        assert isinstance(reply, m.Welcome) and not reply.accepted, reply
        assert reply.stats_port == 0 and "run is in progress" in reply.reason, reply


def check_replies(sock: zmq.Socket[bytes]) -> None:
    """What the master answers a stranger: a refusal to register (no stats port) or a
    REFUSED naming both protocol versions; never a message of the run."""
    for frames in recv_all(sock):
        try:
            reply = decode(frames)
        except Refused as e:
            assert "protocol version" in str(e), e
            continue
        assert isinstance(reply, m.Welcome) and not reply.accepted \
            and reply.stats_port == 0, reply


def assert_exact(r: Result, target: Target) -> None:
    assert r.code == 0, (r.code, r.stdout[-3000:], r.stderr[-3000:])
    served = target.counts()
    assert r.final_int("success count") == served["ok"] > 0, (served, r.stdout[-1500:])
    assert r.final_int("fail count") == 0 == served["fail"], r.stdout[-1500:]
    rows = {line.split()[0]: line.split()[1:] for line in r.section("agents:")}
    assert rows[AGENT][-1] == "ok" and int(rows[AGENT][2]) == served["ok"], rows
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]


# -- 1. the master's control socket ----------------------------------------------------------
def test_master_control_socket_takes_garbage_during_a_run_and_counts_exactly(
        tmp_path: Path, tag: str, target: Target) -> None:
    with bounded(50), zmq_context() as ctx, live_run(tmp_path, tag, target) as run:
        pool = [socket(ctx, zmq.DEALER, run.control),
                socket(ctx, zmq.DEALER, run.control),
                socket(ctx, zmq.DEALER, run.control, routing_id=b"\x00fuzz"),
                socket(ctx, zmq.DEALER, run.control, routing_id=AGENT.encode())]
        probe = Probe(ctx, run.control)
        probe.check(10)
        watch = RssWatch(run.proc.pid)
        # a frame over the socket's MAXMSGSIZE: libzmq drops that connection unread
        over = socket(ctx, zmq.DEALER, run.control)
        send(over, [header(m.Final.TYPE), bytes(CONTROL_LIMIT + 1)])
        # big frames under it: refused by size before decoding, or undecodable
        big = socket(ctx, zmq.DEALER, run.control)
        send(big, [header(m.Heartbeat.TYPE), bytes(10 * MIB)])
        send(big, [header(m.Final.TYPE), b"\xc6" + struct.pack(">I", 15 * MIB) + bytes(15 * MIB)])
        stop_at = run.planned_at + RUN_TIME - 1.5  # well before the run ends
        thrown = [0]

        @live(20)
        @given(batch=st.lists(control_frames, min_size=1, max_size=6),
               which=st.integers(0, len(pool) - 1))
        def throw(batch: list[list[bytes]], which: int) -> None:
            for frames in batch:
                send(pool[which], frames)
            thrown[0] += len(batch)
            assert run.proc.poll() is None, "the master died"
            probe.check()
            check_replies(pool[which])

        rounds(throw, stop_at)
        # then a flood of small garbage, as fast as it goes
        for i in range(5000):
            send(pool[i % 2], [header(MESSAGE_TYPES[i % len(MESSAGE_TYPES)]), os.urandom(64)])
        probe.check()
        watch.settle()
        assert run.proc.poll() is None, "the master died"
        r = run.result(40)
        watch.stop()
    print(f"{thrown[0]} messages in examples; master RSS {watch}; "
          f"{r.stderr.count('dropped a bad control message')} drops logged")
    assert_exact(r, target)
    assert thrown[0] > 100, thrown
    assert "dropped a bad control message" in r.stderr
    assert "over the limit of 65536" in r.stderr  # the 10 MiB body, refused by its size
    assert f"body of {CONTROL_LIMIT + 1} bytes" not in r.stderr  # libzmq dropped that one
    watch.check()


# -- 2. the master's stats socket ------------------------------------------------------------
def delta_wire(agent: str = AGENT, worker: int = 0, seq: int = 1, second: int = 1,
               clients: int = 4, ops: list[list[Any]] | None = None, cpu: float = 0.1,
               lag: float = 0.0, behind: float = 0.0) -> list[Any]:
    return [agent, worker, seq, second, clients,
            [ops if ops is not None else [op_wire(ok=1)], []], cpu, lag, behind]


@st.composite
def absurd_delta(draw: st.DrawFn) -> bytes:
    """A well-formed DELTA body, often for the real worker 0 with a plausible sequence and
    second (it may reach the live figures, never the final block), with absurd values
    now and then: a sequence or a second far ahead, 1e12 calls, another worker."""
    def often(usual: st.SearchStrategy[Any], *absurd: Any) -> Any:
        return draw(weighted((3, usual), (1, st.sampled_from(absurd))))

    ok = often(st.integers(0, 1000), 19_999_999, 20_000_001, 2**32 - 1, 10**12)
    fail = often(st.integers(0, 10), 19_999_999, 10**12, 2**63 - 1)
    name = draw(st.sampled_from(["POST", "x"]) | st.text(min_size=1, max_size=8))
    return packb(delta_wire(
        agent=often(st.just(AGENT), "ghost", "x" * 1000, ""),
        worker=often(st.just(0), 1, 7, 2**63 - 1),
        seq=often(st.integers(0, 100), 10**6, 2**63 - 1, 2**64 - 1),
        second=often(st.integers(1, 30), 1000, 10**6, m.MAX_SECOND, m.MAX_SECOND + 1),
        clients=often(st.integers(0, 8), 10**9, 2**64 - 1),
        ops=[op_wire(name, ok=ok, fail=fail, wide=ok >= 2**32)],
        cpu=often(st.floats(0, 2), 1e308, 5e-324),
        lag=often(st.floats(0, 1), 1e308),
        behind=often(st.floats(0, 1), 1e308, float(m.MAX_SECOND) + 1)))


def stats_frames(topic: bytes) -> st.SearchStrategy[list[bytes]]:
    """Mostly DELTAs and HELLOs for this run, forged, mutated or with a field replaced;
    some for another run or a longer topic; some with another header or random frames."""
    delta = m.Delta(agent=AGENT, worker=0, seq=3, second=2, clients=4,
                    totals=totals_of(op_wire(ok=50, fail=2)), cpu_seconds=0.2, loop_lag=0.001)
    hellos = [m.Hello(agent=AGENT, worker=0), m.Hello(agent="ghost", worker=3)]
    delta_body = weighted((2, absurd_delta()), (1, mutated(pack(delta))), (1, replaced(delta)))
    hello_body = weighted((1, st.sampled_from(hellos).map(pack)),
                          (1, st.sampled_from(hellos).flatmap(lambda s: mutated(pack(s)))),
                          (1, st.sampled_from(hellos).flatmap(replaced)))
    other_topics = st.sampled_from([topic + b"x", OTHER_RUN.encode(), topic[:8], b""]) \
        | st.binary(max_size=20)
    return weighted(
        (60, st.tuples(st.just(topic), st.just(DELTA_HEADER), delta_body).map(list)),
        (10, st.tuples(st.just(topic), st.just(header(m.Hello.TYPE)), hello_body).map(list)),
        (10, st.tuples(other_topics, st.just(DELTA_HEADER), absurd_delta()).map(list)),
        (10, st.tuples(st.just(topic), master_headers, delta_body).map(list)),
        (5, st.tuples(st.just(topic), control_frames).map(lambda t: [t[0], *t[1]])),
        (5, st.lists(st.binary(max_size=100), min_size=1, max_size=4)),
    )


def test_master_stats_socket_takes_forged_deltas_during_a_run_and_counts_exactly(
        tmp_path: Path, tag: str, target: Target) -> None:
    with bounded(50), zmq_context() as ctx, live_run(tmp_path, tag, target) as run:
        topic = run.run_id.encode()
        endpoint = f"tcp://127.0.0.1:{run.stats_port}"
        pubs = [socket(ctx, zmq.PUB, endpoint) for _ in range(3)]
        over = socket(ctx, zmq.PUB, endpoint)
        probe = Probe(ctx, run.control)
        time.sleep(0.5)  # the SUB's subscription reaches each PUB
        probe.check(10)
        watch = RssWatch(run.proc.pid)
        # a frame over the stats socket's MAXMSGSIZE: libzmq drops that connection unread
        send(over, [topic, DELTA_HEADER, bytes(STATS_SOCKET_MAX + 1)])
        # deltas no worker of this run could send: sequence far ahead, 1e12 calls
        for seq, ops in ((10**12, [op_wire(ok=1)]), (1, [op_wire(fail=10**12)]),
                         (2, [op_wire(ok=10**12, wide=True)])):
            send(pubs[0], [topic, DELTA_HEADER, packb(delta_wire(seq=seq, ops=ops))])

        def hellos(first: int) -> float:
            """HELLOs of 120 MB in all from workers not in the plan, with big names: the
            master must keep nothing of them. Its memory once they are read."""
            for i in range(first, first + HELLOS):
                send(pubs[1], [topic, header(m.Hello.TYPE),
                               pack(m.Hello(agent=f"ghost-{i:05}-" + "g" * 60_000, worker=i))])
            return watch.settle()

        # the high-water mark of reading them: glibc may give some of it back at once (the
        # top of the heap was free) or keep it for reuse, whichever the heap's layout allows
        after_first = max(hellos(0), watch.peak)
        stop_at = run.planned_at + RUN_TIME - 3
        thrown = [0]

        @live(20)
        @given(batch=st.lists(stats_frames(topic), min_size=1, max_size=8),
               which=st.integers(0, len(pubs) - 1))
        def throw(batch: list[list[bytes]], which: int) -> None:
            for frames in batch:
                send(pubs[which], frames)
            thrown[0] += len(batch)
            time.sleep(0.005)
            assert run.proc.poll() is None, "the master died"
            probe.check()

        rounds(throw, stop_at)
        probe.check()
        # as many again: freed memory is reused, so a master that keeps nothing of them
        # does not grow much past that mark; one that keeps them grows by their size again
        kept = hellos(HELLOS) - after_first
        assert run.proc.poll() is None, "the master died"
        r = run.result(40)
        watch.stop()
    print(f"{thrown[0]} messages in examples; master RSS {watch}, {kept:.0f} MB more after "
          f"the second {HELLOS} HELLOs")
    assert_exact(r, target)
    assert thrown[0] > 100, thrown
    assert "dropped a bad stats message" in r.stderr
    assert "live delta(s) dropped as implausible" in r.stdout, r.stdout[-2000:]
    assert kept < HELLOS_KEPT_MB, f"{kept:.0f} MB kept of {HELLOS} HELLOs of unplanned workers"
    watch.check(growth=2 * RSS_GROWTH_MB)  # the allocator keeps some of what HELLOs took


# -- 3. an agent's control socket ------------------------------------------------------------
@dataclass
class FakeMaster:
    """A ROUTER an agent dials: answers its heartbeats like a master, keeps the rest."""

    ctx: zmq.Context[zmq.Socket[bytes]]
    sock: zmq.Socket[bytes] = field(init=False)
    port: int = field(init=False)
    identity: bytes = b""  # the agent's, as of its latest message (it changes on redial)
    got: list[Message] = field(default_factory=list)
    beats: int = 0

    def __post_init__(self) -> None:
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")

    def send(self, frames: list[bytes]) -> None:
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart([self.identity, *frames], flags=zmq.NOBLOCK)

    def pump(self, seconds: float) -> None:
        """Read for ``seconds``: echo heartbeats, answer LEAVING, keep everything."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1000))):
                continue
            self.identity, *frames = self.sock.recv_multipart()
            msg = decode(frames)
            self.got.append(msg)
            if isinstance(msg, m.Heartbeat):
                self.beats += 1
                self.send(encode(m.Heartbeat(sent_at=time.time(), echo=msg.sent_at)))
            elif isinstance(msg, m.Leaving):
                self.send(encode(m.Farewell(reason="recorded")))

    def wait_for(self, kind: type[Message], timeout: float, since: int = 0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.got[since:]:
                if isinstance(msg, kind):
                    return msg
            assert time.monotonic() < deadline, \
                f"no {kind.__name__} from the agent: {self.got[since:][-20:]}"
            self.pump(0.05)


def fuzz_job(run_id: str, class_file: str = "c.py", bundle_path: str = "",
             class_name: str = "", custom: dict[str, Any] | None = None) -> m.Job:
    """A job whose client file is empty: its worker fails before load, whatever else."""
    bundle = [m.BundleFile(path="c.py", mode=0o644, data=b"")]
    if bundle_path:
        bundle.append(m.BundleFile(path=bundle_path, mode=0o644, data=b"escaped"))
    return m.Job(run_id=run_id, host="http://127.0.0.1:1/", class_file=class_file,
                 class_name=class_name, custom_conf=custom or {}, users=1, hatch_rate=1.0,
                 run_time=1.0, wait_time=0.0, stop_grace=0.0, total_workers=1, worker_ids=[0],
                 bundle=bundle)


def agent_safe(frames: list[bytes]) -> bool:
    """Not a REFUSED, nor a header of another protocol version: from its master, those
    end an agent by design (exit 2)."""
    head = frames[0] if frames else b""
    return not (len(head) == HEADER.size and head[:2] == MAGIC
                and (head[2] != PROTOCOL_VERSION or head[3] == 0))


def test_agent_control_socket_takes_garbage_and_imports_nothing_outside_the_bundle(
        tmp_path: Path, tag: str) -> None:
    marker = f"fuzz-escape-{tag[:8]}"  # the name of every file a job tries to put outside
    agent_tmp = tmp_path / "agent-tmp"  # the agent's TMPDIR: its run directories go here
    agent_tmp.mkdir()
    imported = tmp_path / "canary-imported"
    canary = f"open({str(imported)!r}, 'w').write('imported')\n"
    (agent_tmp / "canary.py").write_text(canary)  # "../canary.py" from a run directory
    (tmp_path / "canary.py").write_text(canary)
    escapes = ["/etc/passwd", str(tmp_path / "canary.py"), "../canary.py",
               "ok/../../canary.py"]
    run_ids = iter(f"{i:016x}" for i in range(1, 10**6))
    bundle_paths = st.sampled_from([f"../{marker}", f"/tmp/{marker}", f"a/../../{marker}",
                                    f"{agent_tmp}/{marker}", f"./../{marker}", "c.py", ".",
                                    "..", "", "a//b", "\x00", "x" * 300, f"{marker}/.."]) \
        | st.text(max_size=20)
    hostile_jobs = st.builds(
        lambda cf, bp, cn, conf: pack(fuzz_job(next(run_ids), cf, bp, cn, conf)),
        st.sampled_from([*escapes, "c.py", "", ".", "c.py/..", "\x00", "/", "~/x.py"])
        | st.text(max_size=20),
        bundle_paths, st.text(max_size=10),
        st.dictionaries(st.text(max_size=8), msgpack_values, max_size=3))
    base_job = fuzz_job("00000000000000ff")
    samples: list[Message] = [
        base_job, m.Start(t0=time.time() + 1), m.Stop(reason="s"), m.Abort(reason="a"),
        m.FinalAck(worker=0), m.RunDone(run_id=base_job.run_id),
        m.Welcome(accepted=True, reason="", stats_port=1, master_time=0.0),
        m.Heartbeat(sent_at=time.time(), echo=0.0)]
    agent_headers = st.one_of(st.sampled_from([*MESSAGE_TYPES, 99, 255]).map(header),
                              st.binary(max_size=8))
    frames_strategy = st.one_of(
        sample_frames(samples, agent_headers),
        st.tuples(st.just(header(m.Job.TYPE)), hostile_jobs).map(list),
    ).filter(agent_safe)

    with bounded(55), zmq_context() as ctx:
        fake = FakeMaster(ctx)
        agents = Agents(tag, fake.port, tmp_path)
        proc = start_agent(tag, agents.master, AGENT, "--workers", "1", "--max-message",
                           str(JOB_MIN), env={"TMPDIR": str(agent_tmp)}, cwd=agents.cwd)
        agents.procs[AGENT] = proc
        log = agents.logs[AGENT] = LineReader(proc.stdout)
        try:
            assert isinstance(fake.wait_for(m.Register, 20), m.Register)
            fake.send(encode(m.Welcome(accepted=True, reason="", stats_port=free_port(),
                                       master_time=time.time())))
            # a client file outside the bundle is never imported: its worker says so
            for class_file in escapes:
                job = fuzz_job(next(run_ids), class_file)
                since = len(fake.got)
                fake.send(encode(job))
                failed = fake.wait_for(m.JobFailed, 15, since)
                assert isinstance(failed, m.JobFailed) and "bundle" in failed.error, failed
                fake.send(encode(m.RunDone(run_id=job.run_id)))
                fake.wait_for(m.RunDoneAck, 15, since)

            @live(80)
            @given(batch=st.lists(frames_strategy, min_size=1, max_size=5))
            def throw(batch: list[list[bytes]]) -> None:
                jobs = []
                for frames in batch:
                    with contextlib.suppress(WireError):
                        msg = decode(frames, JOB_MIN)
                        if isinstance(msg, m.Job):
                            if len(msg.worker_ids) > 1:
                                continue  # not a process per id on this machine
                            jobs.append(msg.run_id)
                    fake.send(frames)
                for run_id in jobs:  # back to idle, as a master does after its run
                    fake.send(encode(m.RunDone(run_id=run_id)))
                fake.pump(0.05)
                assert proc.poll() is None, "the agent died:\n" + log.text(0)

            started = time.monotonic()
            throw()
            print(f"{time.monotonic() - started:.1f}s of examples")
            # still beating, and still registered with this master: no REGISTER since
            beats = fake.beats
            fake.pump(2.5)
            assert fake.beats - beats >= 2, "the agent stopped heartbeating"
            assert sum(isinstance(x, m.Register) for x in fake.got) == 1, "it re-registered"
            # a job over its --max-message (but under the socket's limit) is refused by size
            since = len(fake.got)
            fake.send([header(m.Job.TYPE), bytes(MIB)])
            refused = fake.wait_for(m.JobRefused, 10, since)
            assert isinstance(refused, m.JobRefused) and "over the limit" in refused.error
            # a frame over its MAXMSGSIZE: libzmq drops the connection for good (no redial
            # after a protocol error), so the master is silent: the agent dials again
            since = len(fake.got)
            fake.send([header(m.Job.TYPE), bytes(JOB_MIN + SOCKET_SLACK + 1)])
            fake.wait_for(m.Register, 10, since)
            fake.send(encode(m.Welcome(accepted=True, reason="", stats_port=free_port(),
                                       master_time=time.time())))
            beats = fake.beats
            fake.pump(2.5)
            assert fake.beats - beats >= 2, "the agent stopped heartbeating"
            assert proc.poll() is None, log.text(0)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                fake.pump(0.1)
            assert proc.wait(1) == 0, log.text(0)
        finally:
            agents.stop_all()
            print(f"--- agent log ---\n{log.text(1)[-8000:]}")  # shown when the test fails
    text = log.text()
    assert "dropped a bad message from the master" in text
    assert "Traceback" not in text, text[-3000:]
    assert not imported.exists(), "a client file outside the bundle was imported"
    # nothing was written outside a run directory: no file of that name anywhere around
    assert not list(tmp_path.rglob(f"*{marker}*")) and not list(Path("/tmp").glob(f"*{marker}*"))
    status = status_dir(agent_tmp)  # the agent's status folder stays, emptied at its exit
    assert not list(status.iterdir())
    left = sorted(p.name for p in agent_tmp.iterdir() if p != status)
    assert left == ["canary.py"], left  # every run directory removed
    assert not list(agents.cwd.iterdir())

"""How much of a core the master's stats aggregation needs for many workers.

Simulated workers send realistic deltas (one operation, a latency histogram of ~500
buckets, a few errors) once a second. A real worker has a PUB socket of its own; one
process cannot hold 10,000 of them, so each publisher process has one PUB socket and
sends the deltas of its share of workers through it, pre-encoded: the totals are
packed once per sample and each worker's message is assembled from bytes each second
(checked equal to what `encode_stats` makes). The master's real `Aggregator` (SUB
socket, decode, validate, merge per worker, per second and in total) runs in this
process on asyncio, as in `loadmaster run`. Printed: deltas received, deltas lost, and
this process's CPU time over the measured window as a share of one core.

With ``--curve`` the master's SUB is a CURVE server, as in ``loadmaster run --key``: a
ZAP handler (``loadmaster.auth.AgentAuth``) runs in the master's context and admits one
key, the publishers' (CURVE clients pinned to the master's public key); both key pairs
are made in memory. Decryption runs on ZeroMQ's I/O thread, in this process: its CPU
time counts.

With ``--open`` the same run measures the closed model's deltas and then the open
model's (issue 19), rounds interleaved (``--rounds``): each open delta's operation also
carries its service-time and schedule-lag histograms and its late and dropped counts, as
a worker running ``arrival_rate`` below saturation sends them (service time ~0.7 ms
median as above, lag ~0.1 ms median with a tail past 1 ms, the main histogram their sum:
the response time from the intended start). Printed for each: the master's CPU per delta
and as a share of one core, and at the end the open model's against the closed.

    python bench/aggregation.py [--workers 10000] [--seconds 20] [--publishers 2] [--pin]
        [--dash PAGES] [--curve] [--open [--rounds 1]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import zmq
import zmq.asyncio

from loadmaster.aggregator import Aggregator
from loadmaster.auth import AgentAuth
from loadmaster.config import load_config
from loadmaster.console import AgentLine
from loadmaster.dashboard import Dashboard, DashOptions, Feed
from protocol.security import Curve, KeyPair, curve_keys, curve_of
from protocol.stats import LATE_AFTER_NS, Totals
from protocol.wire.codec import HEADER, MAGIC, PROTOCOL_VERSION, encode_stats
from protocol.wire.messages import Delta

RUN_ID = "bench0aggregate0"
AGENT = "bench"
SAMPLES = 8
HEADER_FRAME = HEADER.pack(MAGIC, PROTOCOL_VERSION, Delta.TYPE)
SNAPSHOTS: list[float] = []  # CPU seconds of each dashboard snapshot built and published


@dataclass
class Measured:
    """One measurement: the master's CPU over its window and what it received."""

    share: float  # of one core
    per_delta: float  # seconds of CPU
    rate: float  # deltas received per second
    lost: int


def realistic_delta(rng: random.Random, agent: str, worker: int, seq: int,
                    open_model: bool = False) -> Delta:
    totals = Totals()
    st = totals.op("HttpClient")
    if open_model:
        sched = st.schedule()
        for _ in range(rng.randint(2000, 4000)):
            service = int(rng.lognormvariate(13.5, 0.6))
            lag = int(rng.lognormvariate(11.5, 1.1))  # ~0.1 ms median, p99 ~1.3 ms
            st.record_ok(service + lag)  # from the intended start
            sched.service.record(service)
            sched.lag.record(lag)
            sched.late += lag > LATE_AFTER_NS
        sched.dropped = rng.choice((0, 0, 0, 1))
    else:
        for _ in range(rng.randint(2000, 4000)):  # ~3,000 calls/s per worker
            st.record_ok(int(rng.lognormvariate(13.5, 0.6)))  # ~0.7 ms median: ~500 buckets
    st.fail = rng.randint(0, 3)
    for _ in range(st.fail):
        totals.add_error(("HttpClient", "ValueError",
                          "response with err http status code:500"))
    return Delta(agent=agent, worker=worker, seq=seq, second=seq + 1, clients=50,
                 totals=totals, cpu_seconds=0.9, loop_lag=0.001)


def delta_frames(topic: bytes, totals_packed: bytes, worker: int, seq: int) -> list[bytes]:
    """The frames of a Delta, assembled from its pre-packed totals (see ``check_frames``)."""
    return [topic, HEADER_FRAME,
            b"".join((head(worker), middle(seq), tail(totals_packed)))]


def packb(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def head(worker: int) -> bytes:
    """A Delta's body up to its worker: a msgpack array of its 9 fields, agent, worker."""
    return b"\x99" + packb(AGENT) + packb(worker)


def middle(seq: int) -> bytes:
    """seq, second, clients."""
    return packb(seq) + packb(seq + 1) + packb(50)


def tail(totals_packed: bytes) -> bytes:
    """totals, cpu_seconds, loop_lag, sched_lag (0.0: none)."""
    return totals_packed + packb(0.9) + packb(0.001) + packb(0.0)


def check_frames(sample: Totals) -> None:
    """The assembled frames are byte for byte those of the real encoder."""
    topic = RUN_ID.encode()
    real = encode_stats(topic, Delta(agent=AGENT, worker=7, seq=3, second=4, clients=50,
                                     totals=sample, cpu_seconds=0.9, loop_lag=0.001))
    ours = delta_frames(topic, packb(sample.to_wire()), 7, 3)
    assert ours == real, "the bench's deltas differ from the real encoder's"


class CountingAuth(AgentAuth):
    """``AgentAuth`` counting the handshakes it admits."""

    admitted = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok: bool = super().callback(domain, key)
        self.admitted += ok
        return ok


def publisher(endpoint: str, first: int, count: int, seconds: float, start_at: float,
              cpus: set[int] | None, keys: list[bytes] | None = None,
              open_model: bool = False) -> None:
    """``count`` simulated workers through one PUB socket, one delta each a second;
    ``keys`` (``curve_keys``): a CURVE client; ``open_model``: the open model's deltas."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    rng = random.Random(first)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.sndhwm = 0  # this bench measures the master, not our send queue
    sock.linger = 5000
    client = curve_of(keys or [])
    if client is not None:
        client.apply(sock)
    sock.connect(endpoint)
    # the parts of every body made once: a publisher costs far less than the workers it
    # stands for, so that it takes little CPU from the master it measures
    tails = [tail(packb(realistic_delta(rng, AGENT, 0, 0, open_model).totals.to_wire()))
             for _ in range(SAMPLES)]
    heads = [head(first + i) for i in range(count)]
    topic = RUN_ID.encode()
    time.sleep(max(0.0, start_at - time.time()))
    seq = 0
    while time.time() < start_at + seconds:
        tick = start_at + seq + 1
        mid = middle(seq)
        for i in range(count):
            sock.send_multipart([topic, HEADER_FRAME,
                                 b"".join((heads[i], mid, tails[(i + seq) % SAMPLES]))])
        seq += 1
        time.sleep(max(0.0, tick - time.time()))
    sock.close()
    ctx.term()


def page(url: str, seconds: float, cpus: set[int] | None) -> None:
    """A dashboard page's reading: the event stream, read and parsed as a browser would."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    deadline = time.time() + seconds
    with urllib.request.urlopen(url + "api/events", timeout=10) as stream:
        for line in stream:
            if line.startswith(b"data: "):
                json.loads(line[6:])
            if time.time() > deadline:
                break


async def serve_dashboard(agg: Aggregator, workers: int
                          ) -> tuple[Dashboard, asyncio.Task[None]]:
    """The dashboard as ``loadmaster run`` feeds it: a snapshot each second."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "bench.yml"
        (Path(tmp) / "client.py").write_text("")
        conf.write_text("host: http://127.0.0.1:8080/\nusers: 500000\nrun_time: 60\n"
                        "benchmark_class_file: client.py\n")
        cfg = load_config(conf, cwd=Path(tmp))
    dash = Dashboard(DashOptions(enabled=True, port=0, browser=False), on_stop=lambda: None)
    await dash.start()
    feed = Feed(cfg, (), RUN_ID)

    async def publish() -> None:
        while True:
            started = time.thread_time()
            covered = max(0, agg.latest_second - 1)
            feed.extend_series(agg, covered)
            cpu, lag = agg.generator_load(covered, AGENT)
            rate, window = agg.current_rps(covered)
            recent = agg.recent(covered).hist
            line = AgentLine(name=AGENT, workers=workers, clients=agg.clients(AGENT),
                             rps=rate, cpu=cpu, loop_lag=lag)
            dash.publish(feed.snapshot(
                phase="running", status="running", agg=agg, agents=[], lines=[line],
                elapsed=float(covered), covered=covered, totals=agg.totals,
                users=agg.clients(), current_rps=rate, rate_window=window,
                recent=(recent.percentile(0.5), recent.percentile(0.9),
                        recent.percentile(0.99))), feed.series)
            SNAPSHOTS.append(time.thread_time() - started)
            await asyncio.sleep(1.0)

    return dash, asyncio.get_running_loop().create_task(publish())


async def measure(workers: int, seconds: float, publishers: int, pin: bool,
                  dash_pages: int | None = None, curve: bool = False,
                  open_model: bool = False) -> Measured:
    cpus = sorted(os.sched_getaffinity(0))
    master_cpus = publisher_cpus = None
    if pin and len(cpus) > 1:  # the master on a core of its own, as on a real cluster
        master_cpus, publisher_cpus = {cpus[-1]}, set(cpus[:-1])
        os.sched_setaffinity(0, master_cpus)
    ctx = zmq.asyncio.Context()
    auth, server, client_keys = None, None, None
    if curve:  # as `loadmaster run --key`: the handler first, then the CURVE server socket
        server = Curve(KeyPair(*zmq.curve_keypair()))
        client = Curve(KeyPair(*zmq.curve_keypair()), server.pair.public)
        client_keys = curve_keys(client)
        auth = CountingAuth(ctx, {client.pair.public: "the bench's publishers"})
        auth.start()
    agg = Aggregator(ctx, "127.0.0.1", RUN_ID, server)
    port = agg.bind()
    for w in range(workers):
        agg.expect("bench", w)
    serve = asyncio.get_running_loop().create_task(agg.serve())
    dash = None
    if dash_pages is not None:
        dash, feeding = await serve_dashboard(agg, workers)
    start_at = time.time() + 3.0  # time for every PUB to connect and subscribe
    per = -(-workers // publishers)
    mp = multiprocessing.get_context("spawn")
    procs = []
    for p in range(publishers):
        first = p * per
        n = min(per, workers - first)
        if n <= 0:
            break
        proc = mp.Process(target=publisher, args=(f"tcp://127.0.0.1:{port}", first, n,
                                                  seconds, start_at, publisher_cpus,
                                                  client_keys, open_model))
        proc.start()
        procs.append(proc)
    senders = len(procs)
    for _ in range(dash_pages or 0):  # pages read in processes of their own: not the master
        assert dash is not None
        proc = mp.Process(target=page, args=(dash.url, seconds + 3.0, publisher_cpus))
        proc.start()
        procs.append(proc)
    await asyncio.sleep(max(0.0, start_at - time.time()) + 1.0)  # skip the first second
    cpu0, wall0 = time.process_time(), time.monotonic()
    got0 = sum(w.next_seq for w in agg.workers.values())
    await asyncio.sleep(seconds - 2.0)
    cpu1, wall1 = time.process_time(), time.monotonic()
    got1 = sum(w.next_seq for w in agg.workers.values())
    for proc in procs:  # the loop keeps serving the dashboard's pages meanwhile
        await asyncio.get_running_loop().run_in_executor(None, proc.join, 30)
    await asyncio.sleep(0.5)
    serve.cancel()
    await asyncio.gather(serve, return_exceptions=True)
    if dash is not None:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await dash.close()
    agg.close()
    if auth is not None:
        auth.stop()  # its ZAP socket too, or term() would wait for it
    ctx.term()
    rate = (got1 - got0) / (wall1 - wall0)
    share = (cpu1 - cpu0) / (wall1 - wall0)
    sample = realistic_delta(random.Random(1), "bench", 0, 0, open_model)
    size = len(encode_stats(RUN_ID.encode(), sample)[2])
    st = sample.totals.ops["HttpClient"]
    buckets = f"{len(st.hist.counts)} histogram buckets"
    if st.sched is not None:
        buckets = (f"histogram buckets: {len(st.hist.counts)} response time, "
                   f"{len(st.sched.service.counts)} service time, {len(st.sched.lag.counts)} "
                   f"schedule lag; late and dropped counts")
    where = (f", master pinned to CPU {min(master_cpus)}, publishers to the others"
             if master_cpus else "")
    if open_model:
        print("model                    : open (arrival_rate)")
    print(f"workers simulated        : {workers} ({publishers} publisher processes{where})")
    if auth is not None:
        print(f"CURVE                    : the SUB a CURVE server, {auth.admitted} of "
              f"{senders} publisher(s) admitted by AgentAuth, {len(auth.refused)} refused")
    if dash_pages is not None:
        cost = sorted(SNAPSHOTS)[len(SNAPSHOTS) // 2] if SNAPSHOTS else 0.0
        print(f"dashboard                : served, a snapshot a second ({1e3 * cost:.2f} ms "
              f"CPU each, median), {dash_pages} page(s) reading its events")
    print(f"delta body size          : ~{size} bytes (1 operation, {buckets})")
    print(f"deltas received          : {rate:.0f}/s over {wall1 - wall0:.1f}s")
    print(f"deltas lost (seq gaps)   : {agg.missed_deltas}")
    print(f"master CPU (aggregation) : {100 * share:.1f}% of one core "
          f"({1e6 * (cpu1 - cpu0) / max(1, got1 - got0):.0f} us per delta)")
    print(f"calls represented        : {agg.totals.ok:,}")
    return Measured(share, (cpu1 - cpu0) / max(1, got1 - got0), rate, agg.missed_deltas)


def compare_models(a: argparse.Namespace) -> None:
    """``--open``: the closed model's deltas and the open model's, rounds interleaved."""
    found: dict[bool, list[Measured]] = {False: [], True: []}
    for n in range(a.rounds):
        for open_model in (False, True) if n % 2 == 0 else (True, False):
            print(f"-- round {n + 1} of {a.rounds}, {'open' if open_model else 'closed'} "
                  f"model", flush=True)
            found[open_model].append(asyncio.run(measure(
                a.workers, a.seconds, a.publishers, a.pin, a.dash, a.curve, open_model)))
            SNAPSHOTS.clear()
    print(f"-- {a.workers:,} workers, {a.rounds} round(s): master CPU, share of one core "
          f"(us per delta)")
    for open_model, label in ((False, "closed"), (True, "open")):
        rounds = ", ".join(f"{100 * m.share:.1f}% ({1e6 * m.per_delta:.0f} us)"
                           for m in found[open_model])
        lost = sum(m.lost for m in found[open_model])
        print(f"{label + ' model':<25}: {rounds}; deltas lost {lost}")
    ratios = [o.per_delta / c.per_delta for c, o in zip(found[False], found[True], strict=True)]
    print(f"{'open / closed, per delta':<25}: {', '.join(f'{r:.2f}' for r in ratios)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--publishers", type=int, default=2)
    p.add_argument("--pin", action="store_true",
                   help="run the master on a CPU of its own, the publishers on the others")
    p.add_argument("--dash", type=int, metavar="PAGES", default=None,
                   help="also serve the dashboard, fed each second, with PAGES pages open "
                        "(0: served, no page)")
    p.add_argument("--curve", action="store_true",
                   help="the SUB a CURVE server behind loadmaster.auth.AgentAuth, the "
                        "publishers CURVE clients with an authorized key")
    p.add_argument("--open", action="store_true",
                   help="measure the closed model's deltas, then the open model's (service "
                        "and lag histograms, late and dropped counts), in the same run")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --open: rounds of both, interleaved")
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    for open_model in (False, True):
        check_frames(realistic_delta(random.Random(0), AGENT, 0, 0, open_model).totals)
    if a.open:
        compare_models(a)
    else:
        asyncio.run(measure(a.workers, a.seconds, a.publishers, a.pin, a.dash, a.curve))


if __name__ == "__main__":
    main()

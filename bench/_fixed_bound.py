"""A fixed-request mode's bound: variant a's call with no task, future or coroutine.

    python bench/_fixed_bound.py URL USERS DURATION DATA_FILE

Not a mode of the load tester (it has none such yet): what one would cost if a client
class could declare its request instead of awaiting it in `execute()`, as wrk's script
does, so that the worker drives each connection from its protocol's callbacks. It is
`HttpClient`'s own connection (`protocol.http._connection.HttpConnection`: its
`data_received`, httptools with `on_headers_complete` and `on_body`, its per-response
bookkeeping, the keep-alive check) and what the worker counts for a call of the built-in
client: the status and the bytes received and sent under the call's name
(`OpStats.statuses`, `received`, `sent`), the call timed from the end of the one before
it and recorded as the call loop records it (`ok`, `sum_ns`, `min_ns`, `max_ns`, the
tally of `Histogram.rows`), a non-2xx status a failure as in `examples/http_fast.py`,
the read timeout's clock read a request. What it leaves out is what the API's bound
(`_api_bound.py`) pays: a task per client, two coroutines and a future per call, a
response object. Same connections and request bytes as the ceiling (`_ceiling.py`).

USERS connections are made first; then `started` is printed and the calls begin. After
DURATION seconds no new request is written, the ones in flight finish, and one JSON
line is printed, as `_ceiling.py` does: `{"responses": N, "errors": E, "elapsed": S}`,
N the 2xx, E every other status, S from the start to the end of the last call, and
`"recorded"`, the histogram's total (equal to N).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ceiling import request_bytes

from protocol.http._connection import HttpConnection
from protocol.http._origin import RequestHead
from protocol.stats import OpStats

_clock = time.perf_counter_ns


class Run:
    """What every connection shares: whether to send again, where the figures go."""

    __slots__ = ("done", "last_end", "open", "rows", "sending", "st")

    def __init__(self, st: OpStats, done: asyncio.Future[None]) -> None:
        self.sending = True
        self.st = st
        self.rows = st.hist.rows()  # type: ignore[union-attr]  # a worker's Histogram
        self.open = 0  # connections with a request in flight
        self.done = done  # set when the last of them has finished
        self.last_end = 0


class FixedConnection(HttpConnection):
    """HttpConnection whose response's end records the call and writes the next one."""

    __slots__ = ("data", "run", "t0")

    def start(self, data: bytes, head: RequestHead, run: Run) -> None:
        self.data, self.run = data, run
        # never resolved: HttpConnection's callbacks take a waiter for a request in flight
        self.waiter = self.loop.create_future()
        self.request = head
        self.op = run.st
        run.open += 1
        self.t0 = _clock()
        self.send_next()

    def send_next(self) -> None:
        data = self.data
        self.transport.write(data)
        self.op.sent += len(data)  # type: ignore[union-attr]
        self.sent_at = self.loop.time()
        if self.timer is None:
            self.arm()

    def finish(self) -> None:
        # HttpConnection.finish's bookkeeping, without the future and the response
        status = self.status
        if not status:
            return  # the end of an interim response
        self.status = 0
        if self.body is not None:
            self.body = None
            self.body_more = None
        self.head = self.head_more = None
        got = self.got
        self.got = 0
        if not self.parser.should_keep_alive():
            self.usable = False
            self.transport.close()
        st = self.run.st
        st.received += got
        statuses = st.statuses
        try:
            statuses[status] += 1
        except KeyError:
            if 100 <= status <= 999:
                statuses[status] = 1
        # the worker's call loop: the call timed and recorded (a non-2xx is a failure)
        t1 = _clock()
        dt = t1 - self.t0
        if 200 <= status < 300:
            st.ok += 1
            st.sum_ns += dt
            if dt > st.max_ns:
                st.max_ns = dt
            if dt < st.min_ns:
                st.min_ns = dt
            s = dt.bit_length() - 8
            if s > 0:
                self.run.rows[s][dt >> s] += 1
            else:
                self.run.rows[0][dt] += 1
        else:
            st.fail += 1
        run = self.run
        if run.sending and self.usable:
            self.t0 = t1
            self.send_next()
            return
        self.waiter = None
        run.last_end = max(run.last_end, t1)
        run.open -= 1
        if not run.open:
            run.done.set_result(None)

    on_message_complete = finish

    def connection_lost(self, exc: Exception | None) -> None:
        waiter = self.waiter
        super().connection_lost(exc)
        if waiter is not None and not self.run.done.done():
            self.run.done.set_exception(ConnectionError(f"connection lost: {exc}"))


async def main(url: str, users: int, duration: float, data_file: str) -> None:
    body = Path(data_file).read_bytes()
    data = request_bytes(url, body)
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"{url}: no host")
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(users):
        _, conn = await loop.create_connection(
            lambda: FixedConnection(loop, parts.netloc, 30.0), parts.hostname, parts.port or 80)
        conns.append(conn)
    st = OpStats("fixed")
    run = Run(st, loop.create_future())
    head = RequestHead("POST", url, b"", b"")
    print("started", flush=True)
    start = _clock()
    for conn in conns:
        conn.start(data, head, run)
    await asyncio.sleep(duration)
    run.sending = False
    await run.done
    for conn in conns:
        conn.transport.close()
    print(json.dumps({"responses": st.ok, "errors": st.fail,
                      "elapsed": (run.last_end - start) / 1e9,
                      "recorded": sum(st.hist.counts.values())}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} URL USERS DURATION DATA_FILE")
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))

"""The live dashboard's HTTP side with real processes on loopback (no browser): where it
binds, who may stop the run, the Host guard, the event stream and the option checks.

tests/test_dashboard_browser.py drives the page itself in a headless Chromium and reuses
the helpers here.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e_helpers import (
    LineReader,
    Result,
    Target,
    free_port,
    run_master,
    started_master,
    write_job,
)

DEFAULT_PORT = 8089
# what the master prints on stdout when the dashboard is up
DASH_LINE = re.compile(r"dashboard: (http://(\S+):(\d+)/) \(its Stop button, from another "
                       r"machine, needs the token (\S+)\)")
STOP_NOTE = "stopped early from the dashboard"
# a few users with a small wait: figures flow without saturating a 2-core machine
LIGHT = {"users": 2, "hatch_rate": 2, "wait_time": 0.05}

# urllib without any proxy from the environment: every request here is to loopback
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    """Status and body of one request (an HTTP error status is returned, not raised)."""
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=b"" if method == "POST" else None)
    try:
        with _opener.open(req, timeout=timeout) as r:
            status: int = r.status
            return status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def get_state(base: str) -> dict[str, Any]:
    status, body = http(base + "api/state")
    assert status == 200, (status, body[:300])
    doc: dict[str, Any] = json.loads(body)
    return doc


def wait_state(base: str, cond: Callable[[dict[str, Any]], bool], timeout: float,
               what: str) -> dict[str, Any]:
    """Poll /api/state until ``cond`` holds; the snapshot that satisfied it."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = get_state(base)
        if cond(doc):
            return doc
        time.sleep(0.2)
    brief = {k: doc.get(k) for k in ("phase", "status", "ok", "fail", "users")}
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last state {brief}")


def running_with_calls(doc: dict[str, Any]) -> bool:
    return bool(doc["phase"] == "running" and doc["ok"] > 0 and doc["users"] > 0)


def stop_post(base: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    status, body = http(base + "api/stop", "POST", headers)
    doc: dict[str, Any] = json.loads(body) if body else {}
    return status, doc


@dataclass
class DashRun:
    """A master serving a dashboard, its output read in threads."""

    proc: subprocess.Popen[str]
    out: LineReader
    err: LineReader
    base: str  # the printed URL, ending with a slash
    host: str
    port: int
    token: str

    def result(self, timeout: float) -> Result:
        code = self.proc.wait(timeout)
        return Result(code, self.out.text(), self.err.text())

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextmanager
def dash_master(workdir: Path, conf: Path, tag: str, *args: str,
                url_timeout: float = 30) -> Iterator[DashRun]:
    """A master started with ``args`` (and --no-browser), once it printed its URL."""
    with started_master(workdir, conf, tag, "--no-browser", *args) as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        try:
            text = out.wait_for("dashboard: http", url_timeout)
        except AssertionError:
            raise AssertionError(f"no dashboard URL; stderr:\n{err.text(1)}") from None
        m = DASH_LINE.search(text)
        assert m is not None, text
        yield DashRun(proc, out, err, m.group(1), m.group(2), int(m.group(3)), m.group(4))


@contextmanager
def held_port(port: int) -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1:port, so nobody else can bind it."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        yield s
    finally:
        s.close()


# -- where it binds ------------------------------------------------------------------------


@pytest.mark.parametrize("enable", ["--dash", "enable_dash"])
def test_default_port_busy_falls_back_to_a_free_one(tmp_path: Path, tag: str,
                                                    target: Target, enable: str) -> None:
    try:
        holder = socket.socket()
        holder.bind(("127.0.0.1", DEFAULT_PORT))
    except OSError as e:
        holder.close()
        if e.errno != errno.EADDRINUSE:
            raise
        pytest.skip(f"127.0.0.1:{DEFAULT_PORT} is already in use on this machine: the test "
                    f"needs to be the one holding it")
    with holder:
        holder.listen(1)
        conf = write_job(tmp_path, {"host": target.url, "run_time": 3, **LIGHT,
                                    "enable_dash": enable == "enable_dash"})
        args = ("--dash",) if enable == "--dash" else ()
        with dash_master(tmp_path, conf, tag, *args, "--dash-keep", "2") as run:
            assert run.host == "127.0.0.1"
            assert run.port != DEFAULT_PORT
            status, page = http(run.base)
            assert status == 200 and b'id="phase"' in page
            assert get_state(run.base)["phase"] in ("waiting", "preparing", "running")
            r = run.result(60)
    assert r.code == 0, r.stderr
    assert r.final_int("success count") == target.counts()["ok"] > 0


def test_explicit_busy_port_is_exit_2_before_any_load(tmp_path: Path, tag: str,
                                                      target: Target) -> None:
    port = free_port()
    with held_port(port):
        conf = write_job(tmp_path, {"host": target.url, "run_time": 3, **LIGHT})
        r = run_master(tmp_path, conf, tag, "--dash-bind", f"127.0.0.1:{port}",
                       "--no-browser", timeout=60)
    assert r.code == 2, (r.stdout, r.stderr)
    assert f"--dash-bind 127.0.0.1:{port}" in r.stderr
    assert "in use" in r.stderr
    assert "final benchmark" not in r.stdout
    assert "dashboard: http" not in r.stdout
    counts = target.counts()
    assert (counts["ok"], counts["fail"]) == (0, 0)


@pytest.mark.parametrize(("args", "needle"), [
    (("--dash-keep", "-1"), "--dash-keep"),
    (("--dash-keep", "nan"), "--dash-keep"),
    (("--dash-bind", "bad host:1"), "--dash-bind bad host:1"),
    (("--dash-bind", "127.0.0.1:99999"), "--dash-bind"),
])
def test_bad_dashboard_options_are_exit_2(tmp_path: Path, tag: str, target: Target,
                                          args: tuple[str, ...], needle: str) -> None:
    conf = write_job(tmp_path, {"host": target.url, "run_time": 3, **LIGHT})
    r = run_master(tmp_path, conf, tag, *args, "--no-browser", timeout=60)
    assert r.code == 2, (r.stdout, r.stderr)
    message = [line for line in r.stderr.splitlines() if line.startswith("loadmaster: ")]
    assert len(message) == 1 and needle in message[0], r.stderr
    assert "Traceback" not in r.stderr
    assert "final benchmark" not in r.stdout
    assert target.counts()["ok"] == 0


# -- who may stop the run ------------------------------------------------------------------


def test_stop_needs_the_header_and_then_stops_gracefully(tmp_path: Path, tag: str,
                                                         target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "run_time": 60, **LIGHT})
    with dash_master(tmp_path, conf, tag, "--dash-bind", f"127.0.0.1:{free_port()}",
                     "--dash-keep", "4") as run:
        before = wait_state(run.base, running_with_calls, 40, "the run to be running")
        # a stop without the header (what a cross-site form could send) is refused
        for headers in ({}, {"X-Dashboard": "yes"}, {"X-Stop-Token": run.token}):
            status, doc = stop_post(run.base, headers)
            assert status == 403, (headers, status, doc)
            assert "X-Dashboard: stop" in doc["error"]
        status, _ = http(run.base + "api/stop")  # GET is not a stop either
        assert status == 405
        time.sleep(2.5)
        after = get_state(run.base)
        assert run.alive()
        assert after["phase"] == "running" and after["ok"] > before["ok"], after["status"]
        assert "stop asked" not in run.err.text(0)

        # with the header, from loopback (no token needed): a graceful stop
        status, doc = stop_post(run.base, {"X-Dashboard": "stop"})
        assert (status, doc) == (200, {"stopping": True})
        stopped_at = time.monotonic()
        run.out.wait_for("final benchmark:", 15)
        assert time.monotonic() - stopped_at < 15
        # the master keeps serving the final figures (--dash-keep): the run is over
        final = wait_state(run.base, lambda d: d["phase"] == "finished", 5, "finished")
        assert final["final"]["exit_code"] == 130
        assert any(STOP_NOTE in note for note in final["final"]["notes"])
        status, doc = stop_post(run.base, {"X-Dashboard": "stop"})
        assert status == 409, doc
        r = run.result(30)
    assert r.code == 130, r.stderr
    assert "stop asked from the dashboard" in r.stderr
    assert STOP_NOTE in r.stdout[r.stdout.rfind("final benchmark:"):]
    # graceful: the calls in flight finished and were counted
    assert r.final_int("success count") == target.counts()["ok"] > after["ok"]
    assert r.final_int("fail count") == 0


def test_a_foreign_host_header_gets_421(tmp_path: Path, tag: str, target: Target) -> None:
    # DNS rebinding: a page from another site whose name resolves to 127.0.0.1 sends
    # its own name as Host; the dashboard answers nothing to it, Stop included
    conf = write_job(tmp_path, {"host": target.url, "run_time": 4, **LIGHT})
    with dash_master(tmp_path, conf, tag, "--dash-bind", f"127.0.0.1:{free_port()}",
                     "--dash-keep", "2") as run:
        port = run.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            status, body = http(run.base + "api/state", headers={"Host": host})
            assert status == 200, (host, body[:200])
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}",
                     "127.0.0.1"):
            for method, path, headers in (("GET", "", {}), ("GET", "api/state", {}),
                                          ("GET", "api/events", {}),
                                          ("GET", "static/dash.js", {}),
                                          ("POST", "api/stop", {"X-Dashboard": "stop"})):
                status, body = http(run.base + path, method,
                                    headers={"Host": host, **headers})
                assert status == 421, (host, method, path, status, body[:200])
                assert b"unknown host" in body
        r = run.result(60)
    # the refused stop stopped nothing: the run went to its end
    assert r.code == 0, r.stderr
    assert STOP_NOTE not in r.stdout and "stop asked" not in r.stderr


# -- the event stream ------------------------------------------------------------------------


@dataclass
class Event:
    at: float  # time.monotonic() when it arrived
    doc: dict[str, Any]


async def _read_events(url: str, until: Callable[[list[Event]], bool],
                       timeout: float) -> list[Event]:
    """`state` events from ``url`` until ``until(events)``; a timeout is an error."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
            s.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        name, data = "", ""
        while not until(events):
            left = deadline - time.monotonic()
            assert left > 0, f"events stopped coming; got {len(events)}"
            line = (await asyncio.wait_for(resp.content.readline(), left)).decode()
            assert line, f"the stream ended after {len(events)} events"
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
            elif line == "":
                assert name == "state", name
                events.append(Event(time.monotonic(), json.loads(data)))
                name, data = "", ""
    return events


def read_events(url: str, until: Callable[[list[Event]], bool],
                timeout: float) -> list[Event]:
    return asyncio.run(_read_events(url, until, timeout))


def test_events_give_each_second_once_and_state_the_whole_series(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "run_time": 7, **LIGHT})
    with dash_master(tmp_path, conf, tag, "--dash-bind", f"127.0.0.1:{free_port()}",
                     "--dash-keep", "4") as run:
        # connected before the run starts: every second arrives on this connection
        events = read_events(run.base + "api/events",
                             lambda ev: bool(ev) and ev[-1].doc["phase"] == "finished", 60)
        whole = get_state(run.base)
        # a page that connects late gets the whole series in its first event
        late = read_events(run.base + "api/events", lambda ev: len(ev) == 1, 10)[0].doc
        r = run.result(30)
    assert r.code == 0, r.stderr

    joined: dict[str, list[Any]] = {key: [] for key in whole["series"]}
    for e in events:
        series = e.doc["series"]
        assert set(series) == set(joined)
        assert len({len(v) for v in series.values()}) == 1, series
        t = series["t"]
        # each event continues where the previous one ended: no repeat, no gap
        assert t == list(range(len(joined["t"]) + 1, len(joined["t"]) + 1 + len(t))), \
            (joined["t"], t)
        for key, values in series.items():
            joined[key].extend(values)
    assert joined == whole["series"] == late["series"]
    assert whole["phase"] == "finished" and whole["final"]["exit_code"] == 0
    assert len(joined["t"]) >= 6  # a 7 s run: its seconds, charted
    # the closed model: none of the open model's figures (tests/test_open_model_views.py)
    assert set(joined) == {"t", "ok", "fail", "clients", "p50_ms", "p90_ms", "p99_ms"}
    assert whole["open"] is None and all(n["open"] is None for n in whole["names"])
    assert sum(joined["ok"]) > 0 and max(joined["clients"]) == 2

    # one event a second while the run runs, each with the seconds it adds
    running = [e for e in events if e.doc["phase"] == "running" and e.doc["covered"] > 0]
    assert len(running) >= 4, [e.doc["phase"] for e in events]
    gaps = [b.at - a.at for a, b in itertools.pairwise(running)]
    assert all(0.3 < g < 2.5 for g in gaps), gaps
    assert 0.8 < sorted(gaps)[len(gaps) // 2] < 1.2, gaps

"""The dashboard seen from another machine: the master in one network namespace, the
dashboard bound on its address there, and a "browser" in another namespace. Such a
peer sees the run, but its Stop needs the token the master printed; the master warns
that the page is reachable. Needs root and `ip netns` (skipped otherwise, saying why).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.e2e_helpers import LineReader, Target, master_cmd, tagged_env, write_job
from tests.netns import Network, private_network

DASH_PORT = 8089
# A page's requests, made by a small program inside the browser's namespace: prints the
# status and the JSON body of each.
CLIENT = r"""
import json, sys, urllib.request, urllib.error
url, token = sys.argv[1], sys.argv[2]
def call(path, headers=None, data=None):
    req = urllib.request.Request(url + path, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
out = {
    "state": call("api/state"),
    "no_header": call("api/stop", data=b""),
    "no_token": call("api/stop", {"X-Dashboard": "stop"}, b""),
    "wrong_token": call("api/stop", {"X-Dashboard": "stop", "X-Stop-Token": "nope"}, b""),
}
out["state_after"] = call("api/state")
out["token"] = call("api/stop", {"X-Dashboard": "stop", "X-Stop-Token": token}, b"")
print(json.dumps(out))
"""


@pytest.fixture
def make_network(tag: str) -> Iterator[Callable[[Sequence[str]], Network]]:
    with ExitStack() as stack:
        yield lambda hosts: stack.enter_context(private_network(tag, hosts))


def test_a_remote_page_sees_the_run_and_stops_it_only_with_the_token(
        tmp_path: Path, tag: str, make_network: Callable[[Sequence[str]], Network]) -> None:
    net = make_network(["master", "browser"])
    master, browser = net["master"], net["browser"]
    target = Target(tag, host=master.ip, netns=master.ns)
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "hatch_rate": 4,
                                "run_time": 60, "wait_time": 0.01})
    cmd = master_cmd(conf, "--dash-bind", f"{master.ip}:{DASH_PORT}", "--no-browser")
    proc = subprocess.Popen(net.exec_cmd(master, cmd), cwd=tmp_path, env=tagged_env(tag),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    out, err = LineReader(proc.stdout), LineReader(proc.stderr)
    try:
        m = re.search(r"dashboard: (\S+) .*needs the token (\S+)\)",
                      out.wait_for("needs the token", 30))
        assert m is not None
        url, token = m.group(1), m.group(2)
        assert url == f"http://{master.ip}:{DASH_PORT}/"
        out.wait_for("current rps", 30)  # the load runs
        page = subprocess.run(
            net.exec_cmd(browser, [sys.executable, "-c", CLIENT, url, token]),
            env=tagged_env(tag), capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
        assert page.returncode == 0, page.stderr
        got = json.loads(page.stdout)
        status, state = got["state"]
        assert status == 200 and state["phase"] == "running" and state["ok"] > 0
        assert got["no_header"][0] == 403
        assert got["no_token"] == [403, {"error": got["no_token"][1]["error"],
                                         "token_required": True}]
        assert got["wrong_token"][0] == 403 and got["wrong_token"][1]["token_required"]
        assert got["state_after"][1]["phase"] == "running"  # refused stops changed nothing
        assert got["token"] == [200, {"stopping": True}]
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    stdout, stderr = out.text(0), err.text(0)
    assert code == 130, stdout + stderr
    assert "final benchmark:" in stdout
    assert "stopped early from the dashboard" in stdout
    assert f"the dashboard listens on {master.ip}: anyone who reaches it sees the run" in stderr
    assert target.counts()["ok"] > 0

"""The built-in HTTP client's figures end to end: statuses and bytes counted in a worker,
carried in its totals, shown in the final block's http section."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e_helpers import Target, run_master, write_job

MIXED_CLIENT = '''
from protocol import ClientProtocol
from protocol.http import HttpClient


class Mixed(ClientProtocol):
    name = "mixed"

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.client = None

    async def init_before_use(self, host):
        self.client = HttpClient(host)
        assert (await self.client.get("/test/init")).status == 200  # before any call

    async def execute(self):
        self.calls += 1
        # every third call asks for a path the target does not have: 404, a failure
        resp = await self.client.get("/missing" if self.calls % 3 == 0 else None)
        resp.raise_for_status()

    async def shutdown(self):
        assert (await self.client.get("/test/shutdown")).status == 200  # after the calls
        await self.client.close()
'''


def count(text: str, label: str) -> int:
    m = re.search(rf"\b{label}: ([\d,]+)", text)
    assert m, f"no {label} in {text!r}"
    return int(m[1].replace(",", ""))


def test_the_http_line_gives_each_status_of_the_calls_and_their_bytes(
        tmp_path: Path, tag: str, target: Target) -> None:
    users = 4
    conf = write_job(tmp_path, {"host": target.url, "users": users, "hatch_rate": users,
                                "run_time": 2, "worker": 2, "wait_time": 0.01},
                     client=MIXED_CLIENT, client_path="clients/mixed.py")
    r = run_master(tmp_path, conf, tag)
    assert r.code == 0, r.stderr
    ok, fail = r.final_int("success count"), r.final_int("fail count")
    assert ok > 50 and fail > 20
    (line,) = r.section("http:")
    name, sent, sent_unit, received, received_unit, *responses = line.split()
    assert name == "mixed"
    assert sent_unit in ("B", "KiB", "MiB") and float(sent) > 0
    assert received_unit in ("B", "KiB", "MiB") and float(received) > 0
    text = " ".join(responses)
    assert re.fullmatch(r"2xx: [\d,]+ 4xx: [\d,]+ \(200: [\d,]+ 404: [\d,]+\)", text), text
    # every call got one response, and only the calls' responses are counted
    assert count(text, "200") == ok and count(text, "404") == fail
    assert count(text, "200") + count(text, "404") == ok + fail
    assert (count(text, "2xx"), count(text, "4xx")) == (ok, fail)
    served = target.counts()["by_path"]
    assert served["/test"] == ok
    assert served["/test/init"] == users == served["/test/shutdown"]  # counted nowhere
    (error,) = r.section("errors:")
    assert error.split()[:3] == [str(fail), "mixed", "HttpStatusError"]

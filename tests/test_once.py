"""`loadmaster run -f conf.yml --once`: one client, one call, in the master's own process,
against a real target on loopback; what it prints and how it exits."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e_helpers import Result, Target, run_master, write_job

TIMEOUT = 60  # seconds for one `loadmaster run --once`; each takes about one

BUILTIN_CLIENT = '''
from protocol import ClientProtocol
from protocol.calls import current_totals
from protocol.http import HttpClient


class Hello(ClientProtocol):
    def init_before_use(self, host):
        self._http = HttpClient(host)

    async def execute(self):
        resp = await self._http.post(body="hi")
        resp.raise_for_status()
        # what a named step does: a row of its own in the call's totals
        current_totals.get().op("Hello.step").record_ok(2_000_000)
        return {"answer": resp.text()}

    async def shutdown(self):
        await self._http.close()
'''

RAISING_CLIENT = '''
from protocol import ClientProtocol
from protocol.http import HttpClient


class Broken(ClientProtocol):
    def init_before_use(self, host):
        self._http = HttpClient(host)

    async def execute(self):
        resp = await self._http.get()
        raise RuntimeError(f"broke on purpose after a {resp.status}")

    async def shutdown(self):
        await self._http.close()
'''

FALSE_CLIENT = RAISING_CLIENT.replace(
    'raise RuntimeError(f"broke on purpose after a {resp.status}")', "return False")

DATA_CLIENT = '''
from protocol import ClientProtocol


class Reader(ClientProtocol):
    @staticmethod
    def global_init(custom_conf=None):
        with open("extra/words.txt") as f:  # relative to the run directory, as on a worker
            Reader.words = f.read().split()

    async def execute(self):
        return Reader.words
'''


def run_once(workdir: Path, conf: Path, tag: str) -> Result:
    return run_master(workdir, conf, tag, "--once", timeout=TIMEOUT)


def test_once_runs_one_call_and_prints_what_it_got(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 50, "run_time": 600},
                     client=BUILTIN_CLIENT, client_path="hello.py")
    r = run_once(tmp_path, conf, tag)
    assert r.code == 0, (r.stdout, r.stderr)
    out = r.stdout
    assert out.count("execute()") == 1, out
    assert "Hello: execute() took " in out
    assert "returned {'answer': 'ok'}: a success" in out
    # the built-in client's last response: status line, headers, the start of the body
    assert f"response: POST {target.url} -> 200 OK, 2 bytes" in out
    assert "  Content-Length: 2" in out
    assert "  body: 'ok'" in out
    # every name's row: the call's own (with its HTTP status) and the step's
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith("  Hello")}
    assert rows["Hello"][:2] == ["1", "0"] and rows["Hello"][3] == "ms", out
    assert "200: 1" in " ".join(rows["Hello"])
    assert rows["Hello.step"] == ["1", "0", "2.00", "ms"], out
    assert "Hello: shutdown()" in out
    assert r.stderr == "", r.stderr
    served = target.counts()
    assert (served["ok"], served["fail"]) == (1, 0)  # exactly one request, not a load


def test_once_runs_the_seed_client_locally_whatever_agents_says(
        tmp_path: Path, tag: str, target: Target) -> None:
    # aiohttp, a sync init_before_use, global_init reading the shipped test_data_file
    conf = write_job(tmp_path, {"host": target.url, "users": 50, "run_time": 600,
                                "agents": 3})
    r = run_once(tmp_path, conf, tag)
    assert r.code == 0, (r.stdout, r.stderr)
    assert "HttpClient: execute() took " in r.stdout
    assert "returned None: a success" in r.stdout
    assert r.stderr.splitlines() == [
        "loadmaster: note: --once runs the call here, in this process; the config's "
        "agents: 3 is not used"]
    served = target.counts()
    assert (served["ok"], served["fail"]) == (1, 0)


def test_once_prints_the_users_traceback_and_fails_when_execute_raises(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 5, "run_time": 600},
                     client=RAISING_CLIENT, client_path="broken.py")
    r = run_once(tmp_path, conf, tag)
    assert r.code == 3, (r.stdout, r.stderr)
    line = RAISING_CLIENT.splitlines().index(
        '        raise RuntimeError(f"broke on purpose after a {resp.status}")') + 1
    assert r.stderr.startswith("Traceback (most recent call last):\n"
                               f'  File "broken.py", line {line}, in execute\n'), r.stderr
    assert "RuntimeError: broke on purpose after a 200\n" in r.stderr
    assert r.stderr.endswith("loadmaster: Broken: execute() raised RuntimeError\n")
    for ours in ("loadmaster/", "loadagent/", "loadagent-", "importlib"):
        assert ours not in r.stderr, r.stderr  # no frame and no run directory of ours
    assert "Broken: execute() raised RuntimeError after " in r.stdout
    assert f"response: GET {target.url} -> 200 OK" in r.stdout  # what it got before
    assert re.search(r"^  Broken +0 +1 +- +200: 1", r.stdout, re.M), r.stdout
    assert "Broken: shutdown()" in r.stdout  # shutdown() still ran
    assert target.counts()["ok"] == 1


def test_once_reports_a_call_that_returned_false_as_a_failure(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 5, "run_time": 600},
                     client=FALSE_CLIENT, client_path="falsy.py")
    r = run_once(tmp_path, conf, tag)
    assert r.code == 3, (r.stdout, r.stderr)
    assert "returned False: it counts as a failure" in r.stdout
    assert r.stderr == "loadmaster: Broken: execute() returned False\n"
    assert target.counts()["ok"] == 1


def test_a_missing_client_file_is_the_runs_one_line_config_error(
        tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 5, "run_time": 60,
                                "benchmark_class_file": "./missing.py"})
    once = run_once(tmp_path, conf, tag)
    assert once.code == 2, (once.stdout, once.stderr)
    assert once.stderr.count("\n") == 1
    assert "key 'benchmark_class_file': './missing.py' is not a file" in once.stderr
    normal = run_master(tmp_path, conf, tag, timeout=TIMEOUT)
    assert (normal.code, normal.stderr) == (once.code, once.stderr)


def test_a_benchmark_class_the_file_lacks_is_one_line_naming_the_key(
        tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 5, "run_time": 60,
                                "benchmark_class": "Nope"},
                     client=BUILTIN_CLIENT, client_path="hello.py")
    r = run_once(tmp_path, conf, tag)
    assert r.code == 2, (r.stdout, r.stderr)  # as a run: a config error, before any call
    assert r.stderr == (f"loadmaster: {conf}: key 'benchmark_class': 'Nope' is not a class "
                        f"of hello.py (it defines Hello)\n")


def test_once_sees_the_files_a_run_ships_and_only_those(tmp_path: Path, tag: str) -> None:
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "words.txt").write_text("alpha beta\n")
    shipped = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 5,
                                   "run_time": 60, "files": ["extra"]},
                        client=DATA_CLIENT, client_path="reader.py")
    r = run_once(tmp_path, shipped, tag)
    assert r.code == 0, (r.stdout, r.stderr)
    assert "returned ['alpha', 'beta']: a success" in r.stdout

    # without files: an agent's run directory has no extra/, and neither has --once
    not_shipped = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 5,
                                       "run_time": 60},
                            client=DATA_CLIENT, client_path="reader.py")
    r = run_once(tmp_path, not_shipped, tag)
    assert r.code == 3, (r.stdout, r.stderr)
    assert "FileNotFoundError: [Errno 2] No such file or directory: 'extra/words.txt'" \
        in r.stderr
    assert r.stderr.endswith("loadmaster: Reader: global_init() raised FileNotFoundError\n")
    assert "execute()" not in r.stdout  # no call after a failed global_init


def test_once_runs_one_call_of_each_class_of_a_mix(
        tmp_path: Path, tag: str, target: Target) -> None:
    mix = BUILTIN_CLIENT + "\n\nclass Bye(Hello):\n    pass\n"
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": 600,
                                "benchmark_class": {"Hello": 3, "Bye": 1}},
                     client=mix, client_path="mix.py")
    r = run_once(tmp_path, conf, tag)
    assert r.code == 0, r.stderr
    served = target.counts()
    assert (served["ok"], served["fail"]) == (2, 0)  # one call of each class
    assert re.search(r"mix.py: (Hello, Bye|Bye, Hello),", r.stdout), r.stdout

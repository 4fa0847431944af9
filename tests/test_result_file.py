"""The result file (`loadmaster run --out`): schema, figures, masking, every ending.

End-to-end tests run the real master, embedded agent and workers on loopback, as
tests/test_run_e2e.py does; unit tests cover masking, the histogram encoding and the
writer.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from loadmaster.masking import MASK, mask_text, masked
from loadmaster.result import (
    ResultFileError,
    check_writable,
    decode_histogram,
    encode_histogram,
    write_result,
)
from protocol.histogram import DenseHistogram, Histogram, bucket_bounds
from tests.e2e_helpers import (
    ROOT,
    LineReader,
    Result,
    free_port,
    run_master,
    started_master,
    write_job,
)

SCHEMA = json.loads((ROOT / "loadmaster" / "schemas" / "result-schema.json").read_text())

SLEEPY_CLIENT = '''
import asyncio
from protocol import ClientProtocol

class Sleepy(ClientProtocol):
    async def execute(self):
        await asyncio.sleep(0.15)
'''


def load_result(path: Path) -> dict[str, Any]:
    """The file, checked against loadmaster/schemas/result-schema.json."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    doc: dict[str, Any] = json.loads(raw)
    jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft202012Validator)
    return doc


def no_leftovers(folder: Path) -> list[str]:
    """Temporary files the writer or the start check left in ``folder``."""
    return [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".probe"))]


def assert_totals_match_final_block(doc: dict[str, Any], r: Result) -> None:
    assert doc["totals"]["all"]["ok"] == r.final_int("success count")
    assert doc["totals"]["all"]["fail"] == r.final_int("fail count")
    assert sum(n["ok"] for n in doc["totals"]["names"].values()) == doc["totals"]["all"]["ok"]
    assert doc["run_time"] == pytest.approx(r.final_float("run time"), abs=0.001)


# -- unit: masking ----------------------------------------------------------------------
def test_masking_hides_url_passwords_and_bearer_tokens_whatever_the_key() -> None:
    cfg = {"host": "https://load:s3cr3t@api.example/v1", "db": "postgres://u:pw@db/x",
           "headers": ["Bearer abc.def.ghi"], "plain": "http://example/x?q=1", "n": 3}
    out = masked(cfg)
    assert out == {"host": f"https://load:{MASK}@api.example/v1",
                   "db": f"postgres://u:{MASK}@db/x", "headers": [f"Bearer {MASK}"],
                   "plain": "http://example/x?q=1", "n": 3}
    assert "s3cr3t" not in json.dumps(out) and "abc.def" not in json.dumps(out)
    assert mask_text("GET https://a:b@h/ failed") == f"GET https://a:{MASK}@h/ failed"


def test_masking_a_value_of_megabytes_keeps_it_and_still_finds_a_url_in_it() -> None:
    """The URL pattern's repeats are bounded: a 2 MiB custom value without a URL (which
    used to take quadratic time) comes back whole, and one inside it is still masked."""
    blob = "x" * (2 << 20)
    assert mask_text(blob) == blob
    assert masked({"blob": blob})["blob"] == blob
    many = "a://" * 200_000  # schemes without a user or password: nothing to hide
    assert mask_text(many) == many
    pad = "x" * (64 << 10)
    inside = f"{pad} https://user:pw@host/ {pad}"
    assert mask_text(inside) == f"{pad} https://user:{MASK}@host/ {pad}"


def test_masking_hides_secret_words_at_any_depth_and_named_keys_in_any_case() -> None:
    config = {"api_token": "t", "API_KEY": 1, "Secret_Sauce": [1], "db_password": None,
              "nested": {"Password": "p", "rows": [{"client_secret": "s", "id": 3}, "x"]},
              "region": "eu", "plain": "visible", "count": 5}
    out = masked(config, ["REGION"])
    assert out == {"api_token": MASK, "API_KEY": MASK, "Secret_Sauce": MASK,
                   "db_password": MASK, "region": MASK, "plain": "visible", "count": 5,
                   "nested": {"Password": MASK, "rows": [{"client_secret": MASK, "id": 3}, "x"]}}
    assert config["api_token"] == "t" and config["nested"]["Password"] == "p"  # a copy
    assert masked({"host": "http://u:p@h/"}, ["host"]) == {"host": MASK}
    assert masked({"host": "h", "users": 3}) == {"host": "h", "users": 3}


# -- unit: histogram encoding -----------------------------------------------------------
@pytest.mark.parametrize("dense", [False, True])
def test_histogram_encoding_decodes_back_to_the_original_counts(dense: bool) -> None:
    rng = random.Random(7)
    hist: Histogram | DenseHistogram = DenseHistogram() if dense else Histogram()
    for _ in range(5000):
        hist.record(int(rng.lognormvariate(15, 2)))
    hist.record(0)
    hist.record(255)
    hist.record(256)
    hist.record((1 << 63) - 1)
    encoded = encode_histogram(*hist.packed())
    assert decode_histogram(encoded) == hist.counts
    assert encoded["i"][0] == 0 and all(gap > 0 for gap in encoded["i"][1:])
    assert json.loads(json.dumps(encoded)) == encoded  # plain ints
    assert encode_histogram(*Histogram().packed()) == {"i": [], "c": []}


def test_a_percentile_computed_offline_as_the_schema_says_matches_ours() -> None:
    rng = random.Random(3)
    hist = Histogram()
    for _ in range(2000):
        hist.record(int(rng.uniform(1e5, 5e7)))
    counts = decode_histogram(encode_histogram(*hist.packed()))
    total = sum(counts.values())
    for q in (0.5, 0.9, 0.99, 0.999):
        rank, seen = max(1, math.ceil(q * total - 1e-9)), 0  # the nearest rank
        for i in sorted(counts):
            seen += counts[i]
            if seen >= rank:
                # the schema's layout, written out: s = (i >> 7) - 1, m = i - (s << 7)
                s = (i >> 7) - 1
                low = (i - (s << 7)) << s
                assert (low, low + (1 << s) - 1) == bucket_bounds(i)
                assert (low + low + (1 << s) - 1) // 2 == hist.percentile(q)
                break


# -- unit: the writer -------------------------------------------------------------------
def test_write_is_atomic_and_gz_round_trips(tmp_path: Path) -> None:
    doc = {"version": 1, "text": "é", "n": [1, 2.5, None]}
    write_result(tmp_path / "r.json.gz", doc)
    with gzip.open(tmp_path / "r.json.gz") as f:
        assert json.load(f) == doc
    write_result(tmp_path / "r.json", doc)
    write_result(tmp_path / "r.json", {**doc, "n": []})  # replaced whole
    assert json.loads((tmp_path / "r.json").read_text()) == {**doc, "n": []}
    assert no_leftovers(tmp_path) == []
    with pytest.raises(ResultFileError, match=r"gone/r\.json"):
        write_result(tmp_path / "gone" / "r.json", doc)


def test_the_start_check_names_the_path_and_leaves_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ResultFileError, match=r"gone/r.json: the folder .*gone does not exist"):
        check_writable(tmp_path / "gone" / "r.json")
    with pytest.raises(ResultFileError, match="is a directory"):
        check_writable(tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ResultFileError, match="Permission denied"):
            check_writable(locked / "r.json")


# -- end to end -------------------------------------------------------------------------
def test_a_run_writes_a_valid_file_whose_figures_match_the_final_block(
        tmp_path: Path, tag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULT_TEST_TOKEN", "s3cr3t-from-env")
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 6, "hatch_rate": 100,
                                "run_time": 2, "worker": 2, "stop_grace": 5,
                                "api_token": "${RESULT_TEST_TOKEN}", "region": "hidden-region",
                                "nested": {"Password": "hunter2", "size": 3}},
                     client=SLEEPY_CLIENT, client_path="sleepy.py")
    out = tmp_path / "result.json"
    r = run_master(tmp_path, conf, tag, "--out", str(out), "--mask", "region")
    assert r.code == 0, r.stderr
    doc = load_result(out)
    assert no_leftovers(tmp_path) == []
    assert (doc["version"], doc["exit_code"], doc["incomplete"]) == (1, 0, False)
    assert (doc["signal"], doc["error"]) == (None, None)
    assert doc["t0"] < doc["end"] and len(doc["run_id"]) == 16
    assert_totals_match_final_block(doc, r)
    assert doc["totals"]["all"]["ok"] > 20 and doc["totals"]["all"]["fail"] == 0
    assert doc["totals"]["names"]["Sleepy"]["p50_ns"] >= 150_000_000
    # the calls in flight at the stop ended in the grace: the last deltas cover them
    series = doc["series"]
    assert doc["missed_deltas"] == 0
    assert sum(series["ok"]) == doc["totals"]["all"]["ok"] == r.final_int("success count")
    assert sum(series["names"]["Sleepy"]["ok"]) == doc["totals"]["all"]["ok"]
    assert sum(series["agents"]["local"]["ok"]) == doc["agents"][0]["ok"]
    assert doc["stop_grace"]["finished"] == 6
    for key in ("clients", "ok", "fail"):
        assert len(series[key]) == series["seconds"] >= 2
    per_second = [sum(decode_histogram(h).values()) for h in series["names"]["Sleepy"]["hist"]]
    assert per_second == series["names"]["Sleepy"]["ok"]
    assert decode_histogram(doc["totals"]["all"]["hist"]) == {
        i: c for i, c in _summed(series["names"]["Sleepy"]["hist"]).items()}
    (agent,) = doc["agents"]
    assert (agent["name"], agent["workers"], agent["clients"], agent["state"]) == \
        ("local", 2, 6, "ok")
    # the config, resolved and masked
    assert doc["config"]["run_time"] == 2 and doc["config"]["worker"] == 2
    assert doc["config"]["hatch_rate"] == 100 and doc["config"]["stop_grace"] == 5
    assert doc["custom"]["api_token"] == MASK and doc["custom"]["region"] == MASK
    assert doc["custom"]["nested"] == {"Password": MASK, "size": 3}
    assert doc["custom"]["test_data_file"] == "./data/data2.json"
    text = out.read_text()
    for secret in ("s3cr3t-from-env", "hidden-region", "hunter2"):
        assert secret not in text


def _summed(hists: list[dict[str, list[int]]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for i, c in decode_histogram(h).items():
            out[i] = out.get(i, 0) + c
    return out


def test_a_gz_name_is_written_compressed(tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 1,
                                "worker": 1}, client=SLEEPY_CLIENT, client_path="sleepy.py")
    out = tmp_path / "result.json.gz"
    r = run_master(tmp_path, conf, tag, "--out", str(out))
    assert r.code == 0, r.stderr
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    doc = load_result(out)
    assert_totals_match_final_block(doc, r)
    assert sum(doc["series"]["ok"]) == doc["totals"]["all"]["ok"] > 0


def test_sigint_while_loading_still_writes_the_file(tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 4, "run_time": 60,
                                "worker": 2}, client=SLEEPY_CLIENT, client_path="sleepy.py")
    out = tmp_path / "result.json"
    with started_master(tmp_path, conf, tag, "--out", str(out)) as proc:
        stdout, stderr = LineReader(proc.stdout), LineReader(proc.stderr)
        stdout.wait_for("current rps", timeout=30)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        r = Result(code, stdout.text(), stderr.text())
    assert r.code == 130, r.stderr
    doc = load_result(out)
    assert (doc["exit_code"], doc["signal"], doc["incomplete"]) == (130, "SIGINT", False)
    assert_totals_match_final_block(doc, r)
    assert doc["totals"]["all"]["ok"] > 0
    assert doc["run_time"] < 30


def test_a_failure_before_the_load_writes_what_exists(tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 1,
                                "agent_timeout": 1, "api_key": "k"},
                     client=SLEEPY_CLIENT, client_path="sleepy.py")
    out = tmp_path / "result.json"
    r = run_master(tmp_path, conf, tag, "--agents", "1", "--bind", f"127.0.0.1:{free_port()}",
                   "--out", str(out))
    assert r.code == 4, r.stderr
    doc = load_result(out)
    assert doc["exit_code"] == 4 and doc["incomplete"] is True
    assert doc["error"].startswith("only 0 of 1 agent(s) registered within 1s")
    assert doc["error"] in r.stderr
    assert (doc["t0"], doc["run_time"], doc["totals"], doc["agents"]) == (None, None, None, [])
    assert doc["series"]["seconds"] == 0 and doc["custom"]["api_key"] == MASK
    assert doc["config"]["agents"] == 1  # the override


def test_a_client_file_that_does_not_compile_writes_the_error(tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 1},
                     client="def broken(:\n", client_path="broken.py")
    out = tmp_path / "result.json.gz"
    r = run_master(tmp_path, conf, tag, "--out", str(out))
    assert r.code == 3, r.stderr
    doc = load_result(out)
    assert (doc["run_id"], doc["exit_code"], doc["incomplete"]) == (None, 3, True)
    assert "the client file does not compile" in doc["error"]
    assert "SyntaxError" in doc["error"]


@pytest.mark.parametrize("where", ["gone/result.json", "."])
def test_an_unwritable_path_is_exit_2_before_any_load(tmp_path: Path, tag: str,
                                                      where: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 30},
                     client=SLEEPY_CLIENT, client_path="sleepy.py")
    started = time.monotonic()
    r = run_master(tmp_path, conf, tag, "--out", where)
    assert r.code == 2, r.stderr
    assert f"--out {Path(where)}" in r.stderr
    assert "shipping" not in r.stderr and "success count" not in r.stdout  # nothing started
    assert time.monotonic() - started < 15
    assert not (tmp_path / "gone").exists() and no_leftovers(tmp_path) == []


def test_a_file_that_cannot_be_written_at_the_end_turns_exit_0_into_1(
        tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 2,
                                "worker": 1}, client=SLEEPY_CLIENT, client_path="sleepy.py")
    folder = tmp_path / "results"
    folder.mkdir()
    with started_master(tmp_path, conf, tag, "--out", str(folder / "r.json")) as proc:
        stdout, stderr = LineReader(proc.stdout), LineReader(proc.stderr)
        stdout.wait_for("current rps", timeout=30)
        folder.rmdir()  # the folder was there at the start
        code = proc.wait(30)
        r = Result(code, stdout.text(), stderr.text())
    assert r.code == 1, r.stderr
    assert r.final_int("success count") > 0  # the final block is still printed
    assert f"cannot write the result file {folder / 'r.json'}" in r.stderr
    assert not folder.exists()

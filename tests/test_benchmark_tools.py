"""The seed's own files run unchanged through the `benchmark_tools` compatibility package.

The fixtures in tests/data/seed are copies, byte for byte, of the seed's README
(README.seed.md, the README of the small tool this project grew from): its client file
``examples/http_post.py`` (``from benchmark_tools import ClientProtocol`` included) and its
config ``conf/examples/http_post.yml``; ``data/data2.json`` is any small JSON. See
tests/data/seed/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark_tools
import protocol
from protocol.client import ClientProtocol
from tests.e2e_helpers import ROOT, Result, Target, run_master, tagged_env

SEED = Path(__file__).resolve().parent / "data" / "seed"
SEED_README = Path("/work/shared/seed/README.seed.md")  # absent in CI: that test skips
CLIENT = Path("examples") / "http_post.py"
CONF = Path("conf") / "examples" / "http_post.yml"


def run_benchmark_tools(workdir: Path, tag: str, *args: str, timeout: float = 90) -> Result:
    """``python -m benchmark_tools ARGS`` in ``workdir``, as the seed's README runs it."""
    proc = subprocess.run([sys.executable, "-m", "benchmark_tools", *args], cwd=workdir,
                          env=tagged_env(tag), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_client_protocol_is_the_very_same_class() -> None:
    assert benchmark_tools.ClientProtocol is protocol.ClientProtocol is ClientProtocol
    assert benchmark_tools.__all__ == ["ClientProtocol"]

    class Seed(benchmark_tools.ClientProtocol):
        async def execute(self) -> None:
            return None

    assert issubclass(Seed, ClientProtocol)


def test_seed_files_run_unchanged_with_python_m_benchmark_tools(
        tmp_path: Path, tag: str, target: Target) -> None:
    work = tmp_path / "seed"
    shutil.copytree(SEED, work)
    client_before = (work / CLIENT).read_bytes()
    assert b"from benchmark_tools import ClientProtocol" in client_before
    # The seed's YAML asks for 800 users for 120 s on 4 workers against port 6301, with
    # the dashboard on; the command-line overrides keep the run short and aim it at the
    # test's target. enable_dash only prints a note for now.
    r = run_benchmark_tools(work, tag, "-f", str(CONF), "--host", target.url,
                            "--users", "4", "--run-time", "2", "--worker", "2")
    assert r.code == 0, (r.stdout, r.stderr)
    assert "final benchmark:" in r.stdout
    served = target.counts()
    assert served["ok"] > 0
    success, fail = r.final_int("success count"), r.final_int("fail count")
    assert success + fail == served["ok"] + served["fail"]
    assert (success, fail) == (served["ok"], served["fail"])
    assert r.final_int("users") == 4
    assert (work / CLIENT).read_bytes() == client_before == (SEED / CLIENT).read_bytes()


def test_same_exit_code_as_loadmaster_run_for_a_bad_config(tmp_path: Path, tag: str) -> None:
    work = tmp_path / "seed"
    shutil.copytree(SEED, work)
    args = ("--users", "0", "--run-time", "1")
    ours = run_benchmark_tools(work, tag, "-f", str(CONF), *args, timeout=60)
    theirs = run_master(work, work / CONF, tag, *args, timeout=60)
    assert ours.code == theirs.code == 2, (ours.stderr, theirs.stderr)
    missing = run_benchmark_tools(work, tag, "-f", "no_such.yml", timeout=60)
    assert missing.code == 2
    assert "no_such.yml" in missing.stderr


def test_help_lists_the_run_options(tmp_path: Path, tag: str) -> None:
    r = run_benchmark_tools(tmp_path, tag, "--help", timeout=60)
    assert r.code == 0, r.stderr
    assert "python -m benchmark_tools [OPTIONS]" in r.stdout
    for option in ("--file", "--users", "--hatch-rate", "--run-time", "--worker", "--host",
                   "--agents", "--bind"):
        assert option in r.stdout


@pytest.mark.skipif(not SEED_README.exists(), reason="the seed's README is not here")
def test_fixtures_are_the_seed_readme_blocks_byte_for_byte() -> None:
    readme = SEED_README.read_bytes()
    client = (SEED / CLIENT).read_bytes()
    conf = (SEED / CONF).read_bytes()
    assert client.startswith(b"# examples/http_post.py\n")
    assert b"```python\n" + client + b"```" in readme
    assert b"```yaml\n" + conf + b"```" in readme


def test_importing_the_main_module_does_no_work() -> None:
    code = ("import sys, benchmark_tools.__main__ as m; "
            "assert 'loadmaster.cli' not in sys.modules; print(m.PROG_NAME)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python -m benchmark_tools"

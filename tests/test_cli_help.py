"""`--version` and `--help` of the commands: versions print, help texts do not contradict."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from protocol import __version__
from tests.e2e_helpers import ROOT

# Wide and plain, so that no help line wraps and no colour code splits a word.
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", ""))
                                     if p)}
METAVAR = re.compile(r"^(<[^>]*>|[A-Z][A-Z_]*)(\s+|$)")  # <int> (typer) or INTEGER (click)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL)


def option_rows(help_text: str) -> dict[str, str]:
    """Each option of a typer/click help screen -> the rest of its line (help and default)."""
    rows = {}
    for raw in help_text.splitlines():
        line = raw.strip().strip("│|").strip().lstrip("*").strip()
        m = re.match(r"^(--[\w-]+)((?:\s*,?\s*-[\w-]+)*)\s*(.*)$", line)
        if m:
            rows[m.group(1)] = METAVAR.sub("", m.group(3)).strip()
    return rows


def assert_defaults_agree(rows: dict[str, str]) -> None:
    for option, text in rows.items():
        # a default stated in the help next to typer's own [default: ...] is a contradiction
        # waiting to happen; one mention only
        assert text.lower().count("default") <= 1, f"{option}: {text}"


def test_loadagent_version() -> None:
    r = run("-m", "loadagent", "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"loadagent {__version__}"


def test_loadmaster_version() -> None:
    r = run("-m", "loadmaster", "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"loadmaster {__version__}"


def test_loadagent_start_help_has_a_text_and_no_contradiction_for_each_option() -> None:
    r = run("-m", "loadagent", "start", "--help")
    assert r.returncode == 0, r.stderr
    rows = option_rows(r.stdout)
    assert set(rows) == {"--master", "--name", "--workers", "--cpu-list", "--max-message",
                         "--log-level", "--key", "--master-key", "--insecure", "--help"}, r.stdout
    for option, text in rows.items():
        assert re.search(r"[a-z]{3}", text.split("[default:")[0]), f"{option}: no help text"
    assert "[default: 0]" not in rows["--workers"]
    assert "core" in rows["--workers"]
    assert "[default: 0]" not in r.stdout
    assert_defaults_agree(rows)


def test_loadmaster_run_help_has_no_contradicting_defaults() -> None:
    r = run("-m", "loadmaster", "run", "--help")
    assert r.returncode == 0, r.stderr
    rows = option_rows(r.stdout)
    assert {"--file", "--users", "--run-time", "--bind"} <= set(rows), r.stdout
    assert_defaults_agree(rows)
    assert "5556" in rows["--bind"]


def test_target_server_help() -> None:
    r = run(str(ROOT / "examples" / "target_server.py"), "--help")
    assert r.returncode == 0, r.stderr
    rows = option_rows(r.stdout)
    assert {"--host", "--port", "--fail-every", "--delay-ms"} <= set(rows), r.stdout
    for option in ("--host", "--port", "--fail-every", "--delay-ms"):
        assert re.search(r"[a-z]{3}", rows[option]), f"{option}: no help text"
    assert "500" in rows["--fail-every"]
    assert "/__count" in r.stdout

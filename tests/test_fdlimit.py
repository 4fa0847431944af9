"""Open-file limits: the soft limit raised to the hard one, and a plan that needs more."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protocol.fdlimit import MARGIN, descriptor_shortfall, open_descriptors

ROOT = Path(__file__).resolve().parent.parent


def in_child(code: str) -> dict[str, int]:
    """Run ``code`` in a fresh interpreter (this process's limits stay as they are)."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    got = in_child("""
        import json, resource
        from protocol.fdlimit import raise_open_files_limit
        NOFILE = resource.RLIMIT_NOFILE
        soft, hard = resource.getrlimit(NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 65536
        resource.setrlimit(NOFILE, (256, hard))  # as a shell's default soft limit
        lowered = resource.getrlimit(NOFILE)[0]
        returned = raise_open_files_limit()
        soft_now, hard_now = resource.getrlimit(NOFILE)
        print(json.dumps({"lowered": lowered, "returned": returned, "soft": soft_now,
                          "hard": hard_now, "hard_before": hard}))
    """)
    assert got["lowered"] == 256
    assert got["hard"] == got["hard_before"] > 256  # the hard limit is left alone
    assert got["soft"] == got["hard"]
    assert got["returned"] == got["soft"]


def test_a_soft_limit_already_at_the_hard_one_is_kept() -> None:
    got = in_child("""
        import json, resource
        from protocol.fdlimit import raise_open_files_limit
        NOFILE = resource.RLIMIT_NOFILE
        resource.setrlimit(NOFILE, (512, 512))
        returned = raise_open_files_limit()
        soft, hard = resource.getrlimit(NOFILE)
        print(json.dumps({"returned": returned, "soft": soft, "hard": hard}))
    """)
    assert got == {"returned": 512, "soft": 512, "hard": 512}


def test_the_test_process_limit_is_untouched_by_those_children() -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_child("""
        import json, resource
        from protocol.fdlimit import raise_open_files_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))
        print(json.dumps({"returned": raise_open_files_limit()}))
    """)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before


def test_open_descriptors_counts_this_process_descriptors() -> None:
    before = open_descriptors()
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(10)]
    try:
        assert open_descriptors() == before + 10
    finally:
        for fd in fds:
            os.close(fd)
    assert open_descriptors() == before


@pytest.mark.parametrize("limit", [1024, 20_000, 524_288])
def test_no_shortfall_when_the_clients_fit(limit: int) -> None:
    room = limit - open_descriptors() - MARGIN
    assert descriptor_shortfall(0, limit) == 0
    assert descriptor_shortfall(room // 2, limit) == 0
    assert descriptor_shortfall(room - 5, limit) == 0  # a few spare for noise


@pytest.mark.parametrize(("limit", "clients"), [(1024, 5_000), (1024, 1_000), (20_000, 50_000)])
def test_a_shortfall_is_what_the_clients_lack_under_the_limit(limit: int, clients: int) -> None:
    low = clients + open_descriptors() + MARGIN - limit
    short = descriptor_shortfall(clients, limit)
    high = clients + open_descriptors() + MARGIN - limit
    assert short > 0
    assert min(low, high) - 2 <= short <= max(low, high) + 2


def test_the_shortfall_grows_one_for_one_with_the_clients() -> None:
    limit = 1024
    base = descriptor_shortfall(2_000, limit)
    assert descriptor_shortfall(2_100, limit) == base + 100


def test_an_unlimited_limit_has_no_shortfall() -> None:
    assert descriptor_shortfall(10_000_000, resource.RLIM_INFINITY) == 0

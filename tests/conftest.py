"""Shared fixtures: a process tag per test, and proof that nothing it started survives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_helpers import Target, kill_tagged, new_tag, wait_no_tagged


@pytest.fixture
def tag() -> Iterator[str]:
    """A tag in the environment of every process the test starts.

    After the test, every tagged process (master, agents, forkservers, workers,
    targets) must be gone; the fixture fails the test otherwise, then kills them.
    """
    t = new_tag()
    yield t
    leftover = wait_no_tagged(t, timeout=15)
    kill_tagged(t)
    assert not leftover, f"processes left running after the test: {leftover}"


@pytest.fixture
def target(tag: str) -> Iterator[Target]:
    """examples/target_server.py on a free loopback port, counting what it answers."""
    t = Target(tag)
    yield t
    t.stop()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A folder with the client file and data file the seed's config names (the config
    tests')."""
    (tmp_path / "client.py").write_text("class C: pass\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data2.json").write_text("{}")
    return tmp_path

"""Tests for the job bundle: path rules, building it on the master, writing it on an agent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from loadagent.rundir import RunDir, write_bundle
from loadmaster.bundle import Bundle, build_bundle
from protocol.bundle import BundleError, check_bundle_path
from protocol.wire.messages import BundleFile

# -- path rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("a.py", "a.py"), ("data/d.json", "data/d.json"), ("./data/./d.json", "data/d.json"),
    ("a//b", "a/b"), ("protocols/x.py", "protocols/x.py"), ("sub/protocol.py", "sub/protocol.py"),
    ("sub/protocol/x", "sub/protocol/x"),
])
def test_good_bundle_paths(path: str, expected: str) -> None:
    assert str(check_bundle_path(path)) == expected


@pytest.mark.parametrize("path", [
    "", ".", "./", "../x", "a/../../x", "a/..", "/etc/passwd", "//x", "a\\b", "..\\x",
    "a\x00b", "protocol.py", "protocol", "protocol/x.py", "./protocol/x.py",
])
def test_bad_bundle_paths(path: str) -> None:
    with pytest.raises(BundleError) as info:
        check_bundle_path(path)
    assert repr(path) in str(info.value)


# -- building on the master ----------------------------------------------------------------


def tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    b = tmp_path / "base"
    tree(b, {
        "client.py": "class C: pass\n",
        "data/data2.json": '{"k": 1}',
        "data/other.json": "not shipped unless named",
        "assets/a.txt": "A",
        "assets/deep/er/b.bin": "B",
        "assets/__pycache__/x.pyc": "cache",
        "extra.txt": "E",
        "notes/readme.md": "N",
    })
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("S")
    return b.resolve()


def contents(bundle: Bundle) -> dict[str, bytes]:
    paths = [f.path for f in bundle.files]
    assert len(paths) == len(set(paths)), "a path listed twice"
    return {f.path: f.data for f in bundle.files}


def test_builds_client_files_and_custom_data(base: Path) -> None:
    bundle = build_bundle(
        base, base / "client.py", ["assets", "extra.txt", "./notes/readme.md"],
        {"test_data_file": "./data/data2.json", "greeting": "hello", "n": 5,
         "folder": "notes", "url": "http://x/y", "missing": "./data/nope.json",
         "list": ["./data/other.json"]},
    )
    assert bundle.class_file == "client.py"
    assert contents(bundle) == {
        "client.py": b"class C: pass\n",
        "assets/a.txt": b"A",
        "assets/deep/er/b.bin": b"B",
        "extra.txt": b"E",
        "notes/readme.md": b"N",
        "data/data2.json": b'{"k": 1}',
    }
    assert "data/data2.json" in bundle.describe()


def test_class_file_given_relative_and_nested(base: Path) -> None:
    tree(base, {"bench/client2.py": "x = 1\n"})
    bundle = build_bundle(base, Path("bench/client2.py"), [], {})
    assert bundle.class_file == "bench/client2.py"
    assert contents(bundle) == {"bench/client2.py": b"x = 1\n"}


def test_a_file_named_twice_is_shipped_once(base: Path) -> None:
    bundle = build_bundle(base, base / "client.py", ["client.py", "data", "data/data2.json"],
                          {"test_data_file": "data/data2.json"})
    assert sorted(contents(bundle)) == ["client.py", "data/data2.json", "data/other.json"]


def test_modes_are_kept(base: Path) -> None:
    script = base / "assets" / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    bundle = build_bundle(base, base / "client.py", ["assets"], {})
    modes = {f.path: f.mode for f in bundle.files}
    assert modes["assets/run.sh"] == 0o755
    assert stat.S_IFMT(modes["assets/a.txt"]) == 0


def test_a_client_file_outside_base_is_shipped_under_its_own_name(
        base: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    tree(elsewhere, {"bench_client.py": "y = 2\n"})
    bundle = build_bundle(base, elsewhere / "bench_client.py", [],
                          {"test_data_file": "./data/data2.json"})
    assert bundle.class_file == "bench_client.py"
    assert contents(bundle) == {"bench_client.py": b"y = 2\n", "data/data2.json": b'{"k": 1}'}


def test_a_link_inside_base_to_a_file_inside_base_keeps_its_own_name(base: Path) -> None:
    (base / "alias.json").symlink_to(base / "data" / "data2.json")
    bundle = build_bundle(base, base / "client.py", ["alias.json"], {})
    assert contents(bundle)["alias.json"] == b'{"k": 1}'


def test_custom_values_outside_base_are_not_shipped(base: Path) -> None:
    bundle = build_bundle(base, base / "client.py", [],
                          {"a": "../outside/secret.txt", "b": "data/../../outside/secret.txt"})
    assert contents(bundle) == {"client.py": b"class C: pass\n"}
    (base / "leak.txt").symlink_to(base.parent / "outside" / "secret.txt")
    bundle = build_bundle(base, base / "client.py", [], {"c": "leak.txt"})
    assert b"S" not in contents(bundle).values()


def refused(base: Path, files: list[str], entry: str, class_file: Path | None = None) -> str:
    with pytest.raises(BundleError) as info:
        build_bundle(base, class_file or base / "client.py", files, {})
    text = str(info.value)
    assert repr(entry) in text, text
    return text


@pytest.mark.parametrize("entry", [
    "../outside/secret.txt", "data/../../outside/secret.txt", "../outside",
])
def test_dotdot_entries_are_refused(base: Path, entry: str) -> None:
    refused(base, [entry], entry)


def test_absolute_entry_outside_base_is_refused(base: Path) -> None:
    entry = str(base.parent / "outside" / "secret.txt")
    refused(base, [entry], entry)
    refused(base, [str(base.parent / "outside")], str(base.parent / "outside"))


def test_symlink_out_of_base_is_refused(base: Path) -> None:
    (base / "link.txt").symlink_to(base.parent / "outside" / "secret.txt")
    assert "link" in refused(base, ["link.txt"], "link.txt")


def test_symlinked_folder_out_of_base_is_refused(base: Path) -> None:
    (base / "linkdir").symlink_to(base.parent / "outside", target_is_directory=True)
    refused(base, ["linkdir"], "linkdir")
    refused(base, ["linkdir/secret.txt"], "linkdir/secret.txt")


def test_links_out_of_base_inside_a_shipped_folder_are_refused(base: Path) -> None:
    (base / "assets" / "deep" / "evil").symlink_to(base.parent / "outside",
                                                   target_is_directory=True)
    with pytest.raises(BundleError, match="evil"):
        build_bundle(base, base / "client.py", ["assets"], {})
    (base / "assets" / "deep" / "evil").unlink()
    (base / "assets" / "deep" / "evil.txt").symlink_to(base.parent / "outside" / "secret.txt")
    with pytest.raises(BundleError, match="evil"):
        build_bundle(base, base / "client.py", ["assets"], {})


def test_a_client_file_linking_out_of_base_is_refused(base: Path) -> None:
    (base / "client_link.py").symlink_to(base.parent / "outside" / "secret.txt")
    with pytest.raises(BundleError, match="client_link"):
        build_bundle(base, base / "client_link.py", [], {})


def test_missing_entry_is_refused(base: Path) -> None:
    refused(base, ["nope.txt"], "nope.txt")


def test_top_level_protocol_is_refused(base: Path) -> None:
    tree(base, {"protocol.py": "x", "protocol/__init__.py": "y", "sub/protocol.py": "ok"})
    for entry in ("protocol.py", "protocol", "protocol/__init__.py"):
        with pytest.raises(BundleError, match="protocol"):
            build_bundle(base, base / "client.py", [entry], {})
    with pytest.raises(BundleError, match="protocol"):
        build_bundle(base, base / "client.py", [], {"shadow": "protocol.py"})
    with pytest.raises(BundleError, match="protocol"):
        build_bundle(base, base / "protocol.py", [], {})
    bundle = build_bundle(base, base / "client.py", ["sub"], {})
    assert "sub/protocol.py" in contents(bundle)


# -- writing on the agent ------------------------------------------------------------------


def snapshot(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` outside ``skip``, with file contents."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            continue
        for name in dirnames + filenames:
            p = d / name
            if p == skip:
                continue
            out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() and \
                not p.is_symlink() else None
    return out


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir(exist_ok=True)
    (tmp_path / "outside" / "keep.txt").write_text("K")
    root = tmp_path / "run"
    root.mkdir()
    return root


def test_write_bundle_keeps_paths_and_contents(run_root: Path) -> None:
    files = [
        BundleFile("client.py", 0o644, b"class C: pass\n"),
        BundleFile("data/data2.json", 0o600, b"{}"),
        BundleFile("a/b/c/d.bin", 0o755, bytes(range(256))),
        BundleFile("./dot/x", 0o644, b""),
        BundleFile("a/b/sibling", 0o644, b"s"),
    ]
    write_bundle(files, run_root)
    assert (run_root / "client.py").read_bytes() == b"class C: pass\n"
    assert (run_root / "data" / "data2.json").read_bytes() == b"{}"
    assert (run_root / "a" / "b" / "c" / "d.bin").read_bytes() == bytes(range(256))
    assert (run_root / "dot" / "x").read_bytes() == b""
    assert (run_root / "a" / "b" / "sibling").read_bytes() == b"s"
    assert os.access(run_root / "a" / "b" / "c" / "d.bin", os.X_OK)
    assert stat.S_IMODE((run_root / "client.py").stat().st_mode) == 0o644
    written = sorted(str(p.relative_to(run_root)) for p in run_root.rglob("*") if p.is_file())
    assert written == ["a/b/c/d.bin", "a/b/sibling", "client.py", "data/data2.json", "dot/x"]


def test_write_bundle_round_trips_a_built_bundle(base: Path, run_root: Path) -> None:
    bundle = build_bundle(base, base / "client.py", ["assets"],
                          {"test_data_file": "./data/data2.json"})
    write_bundle(bundle.files, run_root)
    for f in bundle.files:
        assert (run_root / f.path).read_bytes() == f.data


BAD_FILES = {
    "dotdot": [BundleFile("../escape.txt", 0o644, b"x")],
    "nested dotdot": [BundleFile("a/../../escape.txt", 0o644, b"x")],
    "dotdot into outside": [BundleFile("../outside/new.txt", 0o644, b"x")],
    "absolute": [BundleFile(f"/tmp/loadtest-escape-{os.getpid()}.txt", 0o644, b"x")],
    "backslash": [BundleFile("..\\escape.txt", 0o644, b"x")],
    "nul": [BundleFile("a\x00b", 0o644, b"x")],
    "empty": [BundleFile("", 0o644, b"x")],
    "dot": [BundleFile(".", 0o644, b"x")],
    "duplicate": [BundleFile("a.txt", 0o644, b"1"), BundleFile("a.txt", 0o644, b"2")],
    "duplicate spelled differently": [BundleFile("d/a.txt", 0o644, b"1"),
                                      BundleFile("./d//a.txt", 0o644, b"2")],
    "symlink mode": [BundleFile("link", stat.S_IFLNK | 0o777, b"/etc/passwd")],
    "directory mode": [BundleFile("dir", stat.S_IFDIR | 0o755, b"")],
    "fifo mode": [BundleFile("fifo", stat.S_IFIFO | 0o644, b"")],
    "mode too large": [BundleFile("big", 1 << 40, b"")],
    "negative mode": [BundleFile("neg", -1, b"")],
    "protocol.py": [BundleFile("protocol.py", 0o644, b"x")],
    "file then folder of the same name": [BundleFile("a", 0o644, b"1"),
                                          BundleFile("a/b", 0o644, b"2")],
    "folder then file of the same name": [BundleFile("a/b", 0o644, b"1"),
                                          BundleFile("a", 0o644, b"2")],
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_write_bundle_refuses(run_root: Path, case: str) -> None:
    before = snapshot(run_root.parent, run_root)
    files = BAD_FILES[case]
    with pytest.raises(BundleError) as info:
        write_bundle(files, run_root)
    assert repr(files[-1].path) in str(info.value)
    assert snapshot(run_root.parent, run_root) == before
    assert not Path(f"/tmp/loadtest-escape-{os.getpid()}.txt").exists()
    # a refused entry was not written
    if case != "duplicate" and case != "duplicate spelled differently":
        assert not (run_root / "escape.txt").exists()


@pytest.mark.parametrize("entry", ["link/x", "link/sub/x", "link/a/b/c", "link"])
def test_a_link_in_the_run_dir_cannot_redirect_a_write(run_root: Path, entry: str) -> None:
    outside = run_root.parent / "outside"
    (run_root / "link").symlink_to(outside, target_is_directory=True)
    before = snapshot(run_root.parent, run_root)
    with pytest.raises(BundleError) as info:
        write_bundle([BundleFile(entry, 0o644, b"pwned")], run_root)
    assert repr(entry) in str(info.value)
    assert snapshot(run_root.parent, run_root) == before
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_a_dangling_link_in_the_run_dir_cannot_redirect_a_write(run_root: Path) -> None:
    target = run_root.parent / "outside" / "made-by-link"
    (run_root / "dangling").symlink_to(target)
    for entry in ("dangling", "dangling/x"):
        with pytest.raises(BundleError):
            write_bundle([BundleFile(entry, 0o644, b"pwned")], run_root)
    assert not target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["keep.txt"]


def test_a_link_to_a_file_in_the_run_dir_is_not_followed(run_root: Path) -> None:
    outside_file = run_root.parent / "outside" / "keep.txt"
    (run_root / "f.txt").symlink_to(outside_file)
    with pytest.raises(BundleError):
        write_bundle([BundleFile("f.txt", 0o644, b"pwned")], run_root)
    assert outside_file.read_text() == "K"


# -- run directory -------------------------------------------------------------------------


def test_run_dir_is_fresh_private_and_removed() -> None:
    a = RunDir()
    b = RunDir()
    try:
        assert a.path.is_dir() and b.path.is_dir()
        assert a.path != b.path
        assert list(a.path.iterdir()) == []
        # private, and named by the agent's pid (for the sweep), not by the run
        assert stat.S_IMODE(a.path.stat().st_mode) == 0o700
        assert a.path.name.startswith(f"loadagent-{os.getpid()}-")
        write_bundle([BundleFile("data/x.json", 0o644, b"{}")], a.path)
        assert (a.path / "data" / "x.json").is_file()
    finally:
        a.remove()
        b.remove()
    assert not a.path.exists() and not b.path.exists()
    a.remove()  # twice is fine
    b.remove()


def test_stale_run_directories_of_dead_agents_are_swept(tmp_path: Path) -> None:
    import subprocess

    from loadagent.rundir import sweep_stale_rundirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"loadagent-{dead.pid}-x1ab_9zq"
    live = tmp_path / f"loadagent-{os.getpid()}-x2cd_8yr"
    other = tmp_path / "loadagent-notapid-y"
    for d in (stale, live, other):
        d.mkdir()
        (d / "client.py").write_text("")
    assert sweep_stale_rundirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


# -- warnings for custom values naming files that will not reach the agents ---------------


@pytest.mark.parametrize("remote", [False, True])
def test_a_custom_file_outside_the_folder_is_not_shipped_and_warned_about(
        base: Path, remote: bool) -> None:
    (base.parent / "outside.json").write_text('{"out": 1}')
    bundle = build_bundle(base, base / "client.py", [],
                          {"test_data_file": "../outside.json"}, remote=remote)
    assert contents(bundle) == {"client.py": b"class C: pass\n"}
    assert len(bundle.warnings) == 1
    warning = bundle.warnings[0]
    assert "'test_data_file'" in warning and "../outside.json" in warning
    assert "is not shipped" in warning


def test_a_custom_link_out_of_the_folder_is_warned_about(base: Path) -> None:
    (base / "leak.txt").symlink_to(base.parent / "outside" / "secret.txt")
    bundle = build_bundle(base, base / "client.py", [], {"c": "leak.txt"})
    assert b"S" not in contents(bundle).values()
    assert len(bundle.warnings) == 1
    assert "'c'" in bundle.warnings[0] and "is not shipped" in bundle.warnings[0]


@pytest.mark.parametrize("inside", [False, True])
def test_an_absolute_custom_path_is_warned_about_only_for_remote_agents(
        base: Path, inside: bool) -> None:
    path = str(base / "data" / "data2.json" if inside
               else base.parent / "outside" / "secret.txt")
    local = build_bundle(base, base / "client.py", [], {"test_data_file": path}, remote=False)
    assert local.warnings == []  # the embedded agent runs here: the path works as it is
    assert sorted(contents(local)) == ["client.py"]
    remote = build_bundle(base, base / "client.py", [], {"test_data_file": path}, remote=True)
    assert sorted(contents(remote)) == ["client.py"]
    assert len(remote.warnings) == 1
    warning = remote.warnings[0]
    assert "'test_data_file'" in warning and path in warning
    assert "absolute path" in warning and "not shipped" in warning


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("value", ["data/data2.json", "./data/data2.json",
                                   "data/../data/data2.json"])
def test_a_relative_custom_file_inside_the_folder_is_shipped_without_warning(
        base: Path, remote: bool, value: str) -> None:
    bundle = build_bundle(base, base / "client.py", [], {"test_data_file": value},
                          remote=remote)
    assert contents(bundle)["data/data2.json"] == b'{"k": 1}'
    assert bundle.warnings == []


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("value", ["hello", "./data/nope.json", "../nope.json",
                                   "/nonexistent/loadtest/data.json", "http://x/y", "data"])
def test_a_custom_string_naming_no_file_is_neither_shipped_nor_warned_about(
        base: Path, remote: bool, value: str) -> None:
    bundle = build_bundle(base, base / "client.py", [], {"greeting": value}, remote=remote)
    assert sorted(contents(bundle)) == ["client.py"]
    assert bundle.warnings == []

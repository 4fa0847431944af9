"""Tests for loadmaster.config: the seed's YAML, durations, errors a user can act on."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from loadmaster.config import SYSTEM_KEYS, Config, ConfigError, load_config, parse_duration

SEED = """\
host: http://127.0.0.1:8080/test
users: 10
hatch_rate: 2
run_time: 30
worker: 2
benchmark_class_file: ./client.py
wait_time: 0.5
enable_dash: false
test_data_file: ./data/data2.json
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "client.py").write_text("class C: pass\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data2.json").write_text("{}")
    return tmp_path


def write(base: Path, text: str, name: str = "conf.yml") -> Path:
    path = base / name
    path.write_text(text)
    return path


def load(base: Path, text: str, overrides: dict[str, Any] | None = None) -> Config:
    return load_config(write(base, text), overrides, cwd=base)


def with_key(key: str, value: str) -> str:
    """The seed config with ``key`` set to the YAML text ``value`` (or removed if empty)."""
    lines = [ln for ln in SEED.splitlines() if not ln.startswith(f"{key}:")]
    if value:
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


# -- the seed ------------------------------------------------------------------------------


def test_seed_config_loads(base: Path) -> None:
    cfg = load(base, SEED)
    assert cfg.host == "http://127.0.0.1:8080/test"
    assert cfg.users == 10
    assert cfg.hatch_rate == 2.0
    assert cfg.run_time == 30.0
    assert cfg.worker == 2
    assert cfg.benchmark_class_file == base / "client.py"
    assert cfg.benchmark_class_file.is_file()
    assert cfg.wait_time == 0.5
    assert cfg.enable_dash is False
    assert cfg.custom == {"test_data_file": "./data/data2.json"}
    assert not set(cfg.custom) & SYSTEM_KEYS
    assert cfg.warnings == []
    # defaults of the keys the seed does not set
    assert (cfg.stop_grace, cfg.print_interval, cfg.agents, cfg.agent_timeout) == (10, 2, 0, 60)
    assert cfg.files == [] and cfg.benchmark_class == ""


def test_the_shipped_example_config_loads() -> None:
    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "conf" / "examples" / "http_post.yml", cwd=root)
    assert cfg.users >= 1 and cfg.run_time > 0
    assert "test_data_file" in cfg.custom


def test_relative_class_file_resolves_against_cwd_not_the_config(base: Path) -> None:
    sub = base / "conf"
    sub.mkdir()
    cfg = load_config(write(sub, SEED), cwd=base)
    assert cfg.benchmark_class_file == base / "client.py"
    with pytest.raises(ConfigError, match="benchmark_class_file"):
        load_config(write(sub, SEED), cwd=sub)


def test_hatch_rate_defaults_to_users(base: Path) -> None:
    cfg = load(base, with_key("hatch_rate", ""))
    assert cfg.hatch_rate == 10.0


def test_every_unknown_key_reaches_custom(base: Path) -> None:
    cfg = load(base, SEED + "token: abc\nlimits: {a: 1}\nids: [1, 2]\n")
    assert cfg.custom == {"test_data_file": "./data/data2.json", "token": "abc",
                          "limits": {"a": 1}, "ids": [1, 2]}


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("2m", 120.0), ("1h30m", 5400.0),
    ("250ms", 0.25), ("1h", 3600.0), ("1m30s", 90.0), ("0", 0.0), (0, 0.0), (" 2m ", 120.0),
    ("1.5s", 1.5),
])
def test_durations_parse(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    "abc", "-5", "5x", "", True, False, [], {}, None, -1, "s", "5 x", "1h30", "m5", "nan",
    "inf", float("inf"), float("nan"), "1e400",
])
def test_bad_durations_are_rejected(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ('"90s"', 90.0), ("2m", 120.0), ("1h30m", 5400.0), ("250ms", 0.25),
    ("1.5", 1.5),
])
def test_run_time_in_yaml(base: Path, text: str, seconds: float) -> None:
    assert load(base, with_key("run_time", text)).run_time == pytest.approx(seconds)
    assert load(base, with_key("wait_time", text)).wait_time == pytest.approx(seconds)


# -- errors --------------------------------------------------------------------------------

BAD = {
    "missing host": ("host", "", "host", "required"),
    "missing users": ("users", "", "users", "required"),
    "missing run_time": ("run_time", "", "run_time", "required"),
    "missing class file": ("benchmark_class_file", "", "benchmark_class_file", "required"),
    "users 0": ("users", "0", "users", "at least 1"),
    "users ten": ("users", "ten", "users", "whole number"),
    "users float": ("users", "2.5", "users", "whole number"),
    "users bool": ("users", "true", "users", "whole number"),
    "hatch_rate -1": ("hatch_rate", "-1", "hatch_rate", "above 0"),
    "hatch_rate 0": ("hatch_rate", "0", "hatch_rate", "above 0"),
    "hatch_rate text": ("hatch_rate", "fast", "hatch_rate", "number"),
    "worker many": ("worker", "many", "worker", "auto"),
    "worker 0": ("worker", "0", "worker", "auto"),
    "worker -2": ("worker", "-2", "worker", "at least 1"),
    "enable_dash yes": ("enable_dash", '"yes"', "enable_dash", "true or false"),
    "enable_dash 1": ("enable_dash", "1", "enable_dash", "true or false"),
    "files x": ("files", "x", "files", "list"),
    "files with a number": ("files", "[a, 3]", "files", "list"),
    "run_time soon": ("run_time", "soon", "run_time", "duration"),
    "run_time 0": ("run_time", "0", "run_time", "above 0"),
    "run_time -5": ("run_time", "-5", "run_time", "duration"),
    "wait_time 5x": ("wait_time", "5x", "wait_time", "duration"),
    "host empty": ("host", '""', "host", "non-empty"),
    "host number": ("host", "5", "host", "string"),
    "agents -1": ("agents", "-1", "agents", "at least 0"),
    "stop_grace bad": ("stop_grace", "later", "stop_grace", "duration"),
    "class file missing": ("benchmark_class_file", "./nope.py", "benchmark_class_file",
                           "not a file"),
    "class file is a folder": ("benchmark_class_file", "./data", "benchmark_class_file",
                               "not a file"),
    "run_time huge": ("run_time", "1" * 400, "run_time", "duration"),
    "hatch_rate huge": ("hatch_rate", "1" * 400, "hatch_rate", "number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_errors_name_the_file_the_key_and_what_is_accepted(base: Path, case: str) -> None:
    key, value, named, accepted = BAD[case]
    path = write(base, with_key(key, value))
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    text = str(info.value)
    assert str(path) in text
    assert repr(named) in text or f"`{named}`" in text, text
    assert accepted in text, text


def test_error_for_a_missing_class_file_says_where_relative_paths_start(base: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(base))):
        load(base, with_key("benchmark_class_file", "./nope.py"))


@pytest.mark.parametrize(("text", "says"), [
    ("host: [unclosed\n", "not valid YAML"),
    ("host: a\n  users: : 3\n", "not valid YAML"),
    ("- host: a\n- users: 3\n", "mapping"),
    ("just a string\n", "mapping"),
    ("1: x\n" + SEED, "keys must be strings"),
    ("", "required"),
])
def test_malformed_files(base: Path, text: str, says: str) -> None:
    path = write(base, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(path) in str(info.value) and says in str(info.value)


def test_unreadable_files(base: Path) -> None:
    missing = base / "missing.yml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(missing, cwd=base)
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(base / "data", cwd=base)  # a folder
    if os.geteuid() != 0:  # root reads any file
        locked = write(base, SEED, "locked.yml")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(locked, cwd=base)
    latin1 = base / "latin1.yml"
    latin1.write_bytes(SEED.encode() + "name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(latin1, cwd=base)
    assert str(latin1) in str(info.value)


# -- worker, overrides, near misses --------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("auto", None), ('"auto"', None), ("", None), ("1", 1), ("16", 16),
])
def test_worker(base: Path, text: str, expected: int | None) -> None:
    assert load(base, with_key("worker", text)).worker == expected


def test_overrides_win_over_the_file(base: Path) -> None:
    overrides: dict[str, Any] = {"users": 3, "hatch_rate": 0.5, "run_time": "2m",
                                 "host": "http://other/", "agents": 2, "worker": "auto"}
    cfg = load(base, SEED, overrides)
    assert (cfg.users, cfg.hatch_rate, cfg.run_time, cfg.host, cfg.agents, cfg.worker) == (
        3, 0.5, 120.0, "http://other/", 2, None)
    assert cfg.custom == {"test_data_file": "./data/data2.json"}
    cfg = load(base, with_key("worker", "auto"), {"worker": 3})
    assert cfg.worker == 3


def test_overrides_are_checked_like_the_file(base: Path) -> None:
    with pytest.raises(ConfigError, match="'users'"):
        load(base, SEED, {"users": 0})
    with pytest.raises(ConfigError, match="'run_time'"):
        load(base, SEED, {"run_time": "soon"})


def test_overrides_can_supply_a_missing_key(base: Path) -> None:
    cfg = load(base, with_key("users", ""), {"users": 4})
    assert cfg.users == 4


@pytest.mark.parametrize(("key", "system"), [
    ("run_tme", "run_time"), ("hatchrate", "hatch_rate"), ("worker_", "worker"),
    ("enable_dahs", "enable_dash"),
])
def test_near_miss_keys_warn_and_still_reach_custom(base: Path, key: str, system: str) -> None:
    cfg = load(base, SEED + f"{key}: 5\n")
    assert cfg.custom[key] == 5
    assert len(cfg.warnings) == 1
    assert repr(key) in cfg.warnings[0] and repr(system) in cfg.warnings[0]


def test_far_keys_do_not_warn(base: Path) -> None:
    assert load(base, SEED + "api_token: x\n").warnings == []


@pytest.mark.parametrize("key", ["files", "stop_grace", "print_interval", "agents",
                                 "agent_timeout", "enable_dash", "benchmark_class", "wait_time"])
def test_a_key_left_empty_takes_its_default(base: Path, key: str) -> None:
    cfg = load(base, with_key(key, "") + f"{key}:\n")
    default = load(base, with_key(key, ""))
    assert getattr(cfg, key) == getattr(default, key)
    assert getattr(cfg, key) is not None


def test_custom_value_that_cannot_travel_to_workers_is_a_clear_error(tmp_path: Path) -> None:
    client = tmp_path / "c.py"
    client.write_text("")
    conf = tmp_path / "conf.yml"
    conf.write_text(f"host: h\nusers: 1\nrun_time: 1\nbenchmark_class_file: {client}\n"
                    f"start_day: 2026-11-25\n")
    with pytest.raises(ConfigError) as e:
        load_config(conf)
    assert str(conf) in str(e.value) and "'start_day'" in str(e.value)
    assert "quote a date as a string" in str(e.value)


def test_custom_map_with_non_string_keys_is_a_clear_error(tmp_path: Path) -> None:
    client = tmp_path / "c.py"
    client.write_text("")
    conf = tmp_path / "conf.yml"
    conf.write_text(f"host: h\nusers: 1\nrun_time: 1\nbenchmark_class_file: {client}\n"
                    f"mapping:\n  1: a\n")
    with pytest.raises(ConfigError) as e:
        load_config(conf)
    assert "'mapping'" in str(e.value) and "string keys" in str(e.value)

"""Tests for loadmaster.config: the seed's YAML, durations, errors a user can act on."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from loadmaster import config as config_module
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
    assert (cfg.wait_time.low, cfg.wait_time.high, cfg.wait_time.pacing) == (0.5, 0.5, 0)
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
    cfg = load_config(root / "conf" / "examples" / "open_model.yml", cwd=root)
    assert cfg.arrival_rate == 500 and cfg.max_users == 100 and not cfg.custom


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
    assert load(base, with_key("wait_time", text)).wait_time.low == pytest.approx(seconds)


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
    "run_time 0": ("run_time", "0", "run_time", "expected a duration > 0"),
    "run_time -5": ("run_time", "-5", "run_time", "expected a duration > 0"),
    "wait_time 5x": ("wait_time", "5x", "wait_time", '"90s", "2m", "1h30m" or "250ms"'),
    "wait_time -1": ("wait_time", "-1", "wait_time", "expected a duration >= 0"),
    "wait_time -5s": ("wait_time", "-5s", "wait_time", "expected a duration >= 0"),
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


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"users": 0}, "--users 0: expected a whole number of at least 1"),
    ({"run_time": "soon"}, '--run-time soon: expected a duration such as 90, 1.5, "90s", '
                           '"2m", "1h30m" or "250ms"'),
    ({"run_time": "0"}, "--run-time 0: expected a duration > 0"),
    ({"hatch_rate": -1.0}, "--hatch-rate -1.0: expected a number above 0"),
    ({"worker": "many"}, "--worker many: expected `auto` or a whole number of at least 1"),
    ({"host": ""}, "--host '': expected a non-empty string"),
    ({"agents": -1}, "--agents -1: expected a whole number of at least 0"),
])
def test_a_bad_override_names_the_option_not_the_file(
        base: Path, overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(base, SEED, overrides)
    assert str(info.value) == expected
    # the same value from the file still names the file and the key
    key, value = next(iter(overrides.items()))
    path = write(base, with_key(key, repr(value) if isinstance(value, str) else str(value)))
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value).startswith(f"{path}: key {key!r}: "), str(info.value)


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


# -- bounds: file size and YAML alias expansion ---------------------------------------------


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic 'billion laughs': each level a list of ``width`` aliases of the one before."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_expansion(base: Path) -> None:
    bomb = laughs()
    assert len(bomb.encode()) < 600  # 9**9 = 387 million strings once expanded
    path = write(base, SEED + bomb)
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == (f"{path}: YAML aliases expand to more than 100000 values; "
                               f"refused (a 'billion laughs' file?)")


def test_alias_expansion_is_bounded_near_100000_values(base: Path) -> None:
    item = "[" + ", ".join(["1"] * 999) + "]"  # 1000 values with the list itself
    ok = SEED + f"base: &l {item}\nmany: [{', '.join(['*l'] * 90)}]\n"
    assert len(load(base, ok).custom["many"]) == 90
    with pytest.raises(ConfigError, match="more than 100000 values; refused"):
        load(base, SEED + f"base: &l {item}\nmany: [{', '.join(['*l'] * 110)}]\n")


def test_an_alias_inside_its_own_anchor_is_refused(base: Path) -> None:
    path = write(base, SEED + "loop: &loop [1, *loop]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == f"{path}: a YAML alias refers to a value that contains it; refused"


def test_ordinary_anchors_aliases_and_merge_keys_still_work(base: Path) -> None:
    text = SEED.replace("run_time: 30", "run_time: &rt 45") + (
        "defaults: &defaults {timeout: 5, retries: 2}\n"
        "primary:\n  <<: *defaults\n  retries: 3\n"
        "ids: &ids [1, 2, 3]\n"
        "again: *ids\n"
        "stop_grace: *rt\n")
    cfg = load(base, text)
    assert cfg.run_time == 45.0 and cfg.stop_grace == 45.0
    assert cfg.custom["primary"] == {"timeout": 5, "retries": 3}
    assert cfg.custom["again"] == [1, 2, 3] == cfg.custom["ids"]


def test_a_config_file_over_4_mib_is_refused_before_parsing(base: Path) -> None:
    path = base / "conf.yml"
    with path.open("wb") as f:  # sparse: 10 MiB of NUL bytes, not valid YAML anyway
        f.truncate(10 * 2**20)
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == f"{path}: 10.0 MiB, over the 4 MiB limit for a config file"


def test_the_size_limit_is_the_named_constant(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(base, SEED)
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", len(SEED))
    assert load_config(path, cwd=base).users == 10
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", len(SEED) - 1)
    with pytest.raises(ConfigError, match=r"over the .* limit for a config file"):
        load_config(path, cwd=base)


def test_a_stream_is_read_only_up_to_the_limit(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO has no size to stat: the read stops one byte past the limit."""
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", 1000)
    fifo = base / "conf.yml"
    os.mkfifo(fifo)
    sent = []

    def writer() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as f:
            for _ in range(1000):
                f.write(SEED.encode())  # valid YAML, far over the limit
                f.flush()
                sent.append(1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with pytest.raises(ConfigError) as info:
        load_config(fifo, cwd=base)
    thread.join(10)
    assert str(info.value).startswith(f"{fifo}: more than ")
    assert "limit for a config file" in str(info.value)
    assert len(sent) < 1000  # the reader closed the pipe early


def test_nesting_too_deep_and_huge_numbers_are_config_errors(base: Path) -> None:
    path = write(base, SEED + "deep: " + "[" * 700 + "]" * 700 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == f"{path}: not valid YAML: nested too deeply"
    path = write(base, SEED + "big: " + "7" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value).startswith(f"{path}: cannot read a value: ")
    assert "4300 digits" in str(info.value)


# -- ${NAME} from the environment -----------------------------------------------------------


def test_env_names_are_substituted_in_every_string_value(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_HOST", "http://10.0.0.7:8080")
    monkeypatch.setenv("LT_TOKEN", "s3cret")
    monkeypatch.setenv("LT_USER", "bob")
    monkeypatch.setenv("LT_EMPTY", "")
    text = with_key("host", '"${LT_HOST}/test"') + (
        "api_token: ${LT_TOKEN}\n"
        "login: '${LT_USER}:${LT_TOKEN}'\n"
        "headers:\n  authorization: Bearer ${LT_TOKEN}\n  list: [a, '${LT_USER}']\n"
        "custom: {users: '${LT_USER}'}\n"
        "blank: 'x${LT_EMPTY}y'\n")
    cfg = load(base, text)
    assert cfg.host == "http://10.0.0.7:8080/test"
    assert cfg.custom["api_token"] == "s3cret"
    assert cfg.custom["login"] == "bob:s3cret"
    assert cfg.custom["headers"] == {"authorization": "Bearer s3cret", "list": ["a", "bob"]}
    assert cfg.custom["custom"] == {"users": "bob"}
    assert cfg.custom["blank"] == "xy"


def test_a_whole_env_value_reads_as_the_number_or_boolean_it_holds(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_USERS", "5")
    monkeypatch.setenv("LT_RATE", "2.5")
    monkeypatch.setenv("LT_DASH", "false")
    monkeypatch.setenv("LT_PORT", "8080")
    text = (with_key("users", "${LT_USERS}").replace("hatch_rate: 2", "hatch_rate: ${LT_RATE}")
            .replace("enable_dash: false", "enable_dash: ${LT_DASH}")
            + "port: ${LT_PORT}\nlabel: 'port ${LT_PORT}'\nname: ${LT_DASH}x\n")
    cfg = load(base, text)
    assert (cfg.users, cfg.hatch_rate, cfg.enable_dash) == (5, 2.5, False)
    assert cfg.custom["port"] == 8080
    # inside a longer string the text goes in as it is
    assert cfg.custom["label"] == "port 8080" and cfg.custom["name"] == "falsex"


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("api_token: ${LT_UNSET}\n", "api_token"),
    ("db: {user: x, password: 'pw-${LT_UNSET}'}\n", "db.password"),
    ("hosts: [a, '${LT_UNSET}']\n", "hosts[1]"),
    ("custom: {run_time: '${LT_UNSET}'}\n", "custom.run_time"),
])
def test_an_unset_env_name_names_the_file_and_the_key(
        base: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str, key: str) -> None:
    monkeypatch.delenv("LT_UNSET", raising=False)
    path = write(base, SEED + yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == f"{path}: key {key!r}: ${{LT_UNSET}} is not set in the environment"


def test_an_unset_env_name_in_a_system_key(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LT_UNSET", raising=False)
    path = write(base, with_key("host", "${LT_UNSET}"))
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == f"{path}: key 'host': ${{LT_UNSET}} is not set in the environment"


def test_dollar_forms_that_are_not_substituted(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_X", "value")
    text = SEED + (
        "escaped: '$${LT_X}'\n"          # $${ is a literal ${
        "bare: '$LT_X and $ alone'\n"    # no braces: left as is
        "price: 5$\n"
        "bad_name: '${1X} ${} ${LT-X}'\n"
        "'${LT_X}': key\n")              # mapping keys are not substituted
    cfg = load(base, text)
    assert cfg.custom["escaped"] == "${LT_X}"
    assert cfg.custom["bare"] == "$LT_X and $ alone"
    assert cfg.custom["price"] == "5$"
    assert cfg.custom["bad_name"] == "${1X} ${} ${LT-X}"
    assert cfg.custom["${LT_X}"] == "key"


def test_overrides_are_not_substituted(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_X", "value")
    cfg = load(base, SEED + "from_file: ${LT_X}\n", {"host": "http://h/${LT_X}"})
    assert cfg.custom["from_file"] == "value"
    assert cfg.host == "http://h/${LT_X}"


# -- exact texts of the errors and warnings a user sees --------------------------------------


@pytest.mark.parametrize(("key", "value", "says"), [
    ("run_time", "'2x'", 'expected a duration such as 90, 1.5, "90s", "2m", "1h30m" or '
                         "\"250ms\" (got '2x')"),
    ("wait_time", "-1", "expected a duration >= 0 (got -1)"),
    ("run_time", "0", "expected a duration > 0 (got 0)"),
    ("stop_grace", "'-2m'", "expected a duration >= 0 (got '-2m')"),
])
def test_duration_errors_say_what_is_accepted(base: Path, key: str, value: str, says: str) -> None:
    path = write(base, with_key(key, value))
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == f"{path}: key {key!r}: {says}"


def test_parse_duration_errors_say_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=re.escape('such as 90, 1.5, "90s", "2m"')):
        parse_duration("2x")
    with pytest.raises(ValueError, match=re.escape(">= 0")):
        parse_duration(-1)


def test_a_long_bad_value_is_cut_in_the_error(base: Path) -> None:
    path = write(base, with_key("run_time", "'" + "x" * 10000 + "'"))
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert len(str(info.value)) < len(str(path)) + 250 and str(info.value).endswith("...)")


def test_a_missing_required_key_points_at_its_near_miss(base: Path) -> None:
    path = write(base, with_key("run_time", "") + "run_tme: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == (f"{path}: key 'run_time' is missing; it is required "
                               f"(did you mean run_time? the file has 'run_tme')")


def test_a_missing_required_key_found_under_custom(base: Path) -> None:
    path = write(base, with_key("users", "") + "custom: {users: 5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, cwd=base)
    assert str(info.value) == (f"{path}: key 'users' is missing; it is required (or "
                               f"arrival_rate, for the open model) (the file has "
                               f"it under 'custom', which only global_init reads; put it at "
                               f"the top level)")


def test_a_host_without_a_scheme_warns(base: Path) -> None:
    path = write(base, with_key("host", "notaurl"))
    cfg = load_config(path, cwd=base)
    assert cfg.host == "notaurl"  # not an error: non-HTTP clients use other forms
    assert cfg.warnings == [f"{path}: key 'host': 'notaurl' has no scheme (http://...); "
                            f"the built-in and aiohttp clients will fail every call"]
    cfg = load(base, SEED, {"host": "10.0.0.1:80"})
    assert cfg.warnings == ["--host 10.0.0.1:80: no scheme (http://...); the built-in and "
                            "aiohttp clients will fail every call"]
    assert load(base, SEED, {"host": "https://x/"}).warnings == []
    assert load(base, with_key("host", "tcp://10.0.0.1:80")).warnings == []


def test_custom_mapping_reaches_global_init_whole(base: Path) -> None:
    cfg = load(base, SEED + "custom: {users: 5, run_time: x, host: [a], custm: 1}\n")
    assert cfg.users == 10 and cfg.run_time == 30.0  # the top-level keys, read normally
    assert cfg.custom["custom"] == {"users": 5, "run_time": "x", "host": ["a"], "custm": 1}
    assert cfg.warnings == []
    assert "custom" not in SYSTEM_KEYS


def test_the_readme_key_table_is_the_declaration() -> None:
    from loadmaster.config import keys_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- keys:begin -->\n", 1)[1].split("\n<!-- keys:end -->", 1)[0]
    assert table == keys_table(), (
        "README.md's key table differs from loadmaster/config.py; paste the output of\n"
        "python -c 'from loadmaster.config import keys_table; print(keys_table())'")


def test_every_system_key_is_declared_once_with_a_check_and_a_meaning() -> None:
    from dataclasses import fields

    from loadmaster.config import KEYS, REQUIRED

    assert [f.name for f in KEYS] == [f.name for f in fields(Config) if f.name in SYSTEM_KEYS]
    # users too, unless arrival_rate (checked apart)
    assert set(REQUIRED) == {"host", "run_time", "benchmark_class_file"}
    for f in KEYS:
        assert callable(f.metadata["check"]) and f.metadata["meaning"], f.name


# -- the open model -------------------------------------------------------------------------

OPEN = """\
host: http://127.0.0.1:8080/test
arrival_rate: 500
run_time: 30
benchmark_class_file: ./client.py
"""


def test_the_open_model_loads_with_its_defaults(base: Path) -> None:
    cfg = load(base, OPEN)
    assert cfg.arrival_rate == 500.0 and cfg.time_unit == 1.0 and cfg.arrivals == "uniform"
    assert (cfg.max_users, cfg.pre_allocated_users, cfg.max_schedule_lag) == (1000, 100, 10.0)
    assert cfg.users == 1000  # the pool's most clients: what the plan splits over workers
    resolved = config_module.resolved_keys(cfg)
    assert resolved["arrival_rate"] == 500.0 and "users" not in resolved
    assert "wait_time" not in resolved and "hatch_rate" not in resolved


def test_the_open_models_keys_and_pool_defaults(base: Path) -> None:
    cfg = load(base, OPEN + "time_unit: 1m\narrivals: poisson\nmax_users: 20\n"
                            "max_schedule_lag: 250ms\n")
    assert (cfg.time_unit, cfg.arrivals, cfg.max_schedule_lag) == (60.0, "poisson", 0.25)
    assert (cfg.max_users, cfg.pre_allocated_users) == (20, 20)  # pre: at most max_users
    cfg = load(base, OPEN + "pre_allocated_users: 2000\n")
    assert (cfg.max_users, cfg.pre_allocated_users) == (2000, 2000)  # max: at least pre
    cfg = load(base, OPEN + "wait_time: 0\n")  # a seed file's no-wait is harmless
    assert cfg.arrival_rate == 500.0
    closed = load(base, SEED)
    assert closed.arrival_rate is None and "arrival_rate" not in \
        config_module.resolved_keys(closed)


@pytest.mark.parametrize(("extra", "says"), [
    ("users: 10\n", "key 'users': not with arrival_rate"),
    ("hatch_rate: 5\n", "key 'hatch_rate': not with arrival_rate"),
    ("wait_time: 1\n", "key 'wait_time': not with arrival_rate"),
    ("max_users: 5\npre_allocated_users: 6\n",
     "key 'pre_allocated_users': 6 is over max_users (5)"),
    ("arrivals: bursty\n", "key 'arrivals': expected uniform (evenly spaced) or poisson"),
    ("time_unit: 0\n", "key 'time_unit': expected a duration > 0"),
    ("max_schedule_lag: -1s\n", "key 'max_schedule_lag': expected a duration > 0"),
    ("max_users: 0\n", "key 'max_users': expected a whole number of at least 1"),
])
def test_open_model_errors_name_the_key(base: Path, extra: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as info:
        load(base, OPEN + extra)
    assert str(info.value).startswith(str(base / "conf.yml"))


@pytest.mark.parametrize("rate", ["0", "-5", ".nan", ".inf", "fast", "true"])
def test_a_rate_of_zero_or_below_or_not_a_number_is_refused(base: Path, rate: str) -> None:
    text = OPEN.replace("arrival_rate: 500", f"arrival_rate: {rate}")
    with pytest.raises(ConfigError, match=r"key 'arrival_rate': expected a number above 0"):
        load(base, text)


@pytest.mark.parametrize("key", ["max_users: 5", "pre_allocated_users: 5", "time_unit: 1m",
                                 "arrivals: poisson", "max_schedule_lag: 1s"])
def test_the_open_models_keys_without_arrival_rate_are_errors(base: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"key '{key.split(':')[0]}': only with "
                                          rf"arrival_rate"):
        load(base, SEED + key + "\n")


def test_the_command_line_picks_the_model_over_the_file(base: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--arrival-rate 0: expected a number above 0"):
        load(base, OPEN, {"arrival_rate": 0})
    assert load(base, OPEN, {"arrival_rate": 50}).arrival_rate == 50.0
    # --arrival-rate on a closed-model file: the open model, the file's users ignored
    cfg = load(base, SEED, {"arrival_rate": 50})
    assert cfg.arrival_rate == 50.0 and cfg.users == 1000 and cfg.wait_time.none
    assert any("--arrival-rate: the open model; the file's hatch_rate, users, wait_time "
               "ignored" in w for w in cfg.warnings)
    # --users on an open-model file: the closed model
    cfg = load(base, OPEN + "max_users: 5\n", {"users": 7})
    assert cfg.arrival_rate is None and cfg.users == 7 and cfg.hatch_rate == 7
    assert any("--users: the closed model; the file's arrival_rate, max_users ignored" in w
               for w in cfg.warnings)
    # both models on the command line: an error naming the option
    with pytest.raises(ConfigError, match=r"^--users 5: not with arrival_rate"):
        load(base, OPEN, {"users": 5, "arrival_rate": 10})


def test_a_rate_no_generator_could_start_is_refused(base: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'arrival_rate': over 1,000,000,000 calls a "
                                          r"second"):
        load(base, OPEN.replace("arrival_rate: 500", "arrival_rate: 1.0e+308"))
    with pytest.raises(ConfigError, match=r"key 'arrival_rate': over"):
        load(base, OPEN + "time_unit: 1ms\n".replace("1ms", "0.000000001"))


def test_neither_users_nor_arrival_rate(base: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'users' is missing; it is required \(or "
                                          r"arrival_rate, for the open model\)$"):
        load(base, OPEN.replace("arrival_rate: 500\n", ""))

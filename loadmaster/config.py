"""The run's YAML config: load, check, apply command-line overrides.

System keys are the seed's (host, users, hatch_rate, run_time, worker,
benchmark_class_file, wait_time, enable_dash) and the ones the architecture adds;
every other key reaches ``global_init`` as ``custom_conf``, with a warning when it
looks like a misspelt system key. The key ``custom`` is never a system key: a mapping
under ``custom:`` reaches ``custom_conf["custom"]`` whole (the escape hatch for a user
key whose name collides with a system key).

Environment: ``${NAME}`` in any string value of the file (top level or nested in lists
and mappings, system and custom keys alike; not in mapping keys, not in command-line
overrides) is replaced by the environment variable NAME, which must be set (an unset
name is a ConfigError naming the file and the key). NAME is ``[A-Za-z_][A-Za-z0-9_]*``;
``$${`` is a literal ``${``; a lone ``$`` or ``$NAME`` without braces stays as it is.
A value that is one ``${NAME}`` and nothing else is read as a YAML scalar, as if written
in the file (``users: ${USERS}`` with USERS=5 gives 5, not "5"); inside a longer string
the text is put in as it is.

Errors from the file read "<file>: key '<key>': <what is accepted> (got <value>)";
errors from a command-line override name the option: "--users 0: <what is accepted>".
"""

from __future__ import annotations

import ast
import difflib
import io
import os
import re
import stat
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack
import yaml

from loadmaster import config_values as values
from loadmaster.config_values import parse_duration
from loadmaster.thresholds import Rule, parse_thresholds
from protocol.plan import class_counts
from protocol.wire.limits import CONFIG_FILE_MAX, CUSTOM_CONF_MAX, format_size
from protocol.wire.messages import MAX_ARRIVAL_RATE

__all__ = ["KEYS", "SYSTEM_KEYS", "Config", "ConfigError", "keys_table", "load_config",
           "parse_duration", "resolved_keys"]

CUSTOM_KEY = "custom"  # never a system key: its mapping reaches custom_conf["custom"] whole

# Limits: a config file is at most MAX_CONFIG_BYTES; YAML aliases add at most MAX_ALIAS_VALUES;
# custom values, packed, at most CUSTOM_CONF_MAX in all (protocol/wire/limits.py).
MAX_CONFIG_BYTES = CONFIG_FILE_MAX
MAX_ALIAS_VALUES = 100_000

# The open model's keys, and the closed model's that it replaces
OPEN_ONLY = ("time_unit", "arrivals", "max_users", "pre_allocated_users", "max_schedule_lag")
CLOSED_ONLY = ("users", "hatch_rate", "wait_time")
DEFAULT_MAX_USERS = 1000
DEFAULT_PRE_ALLOCATED = 100

_ENV = re.compile(r"\$(\$\{)|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A config problem; the message names the file and key and what is accepted."""


def _key(check: Callable[[Any], Any], meaning: str, default: Any = MISSING,
         shown: str | None = None) -> Any:
    """A system key: the field's check, its meaning and how its default reads in YAML."""
    meta = {"check": check, "meaning": meaning,
            "shown": shown if shown is not None else ("required" if default is MISSING
                                                      else f"`{default}`")}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class Config:
    """The run's config. Every system key is declared here, once: its check, default and
    meaning (the README's key table is generated from these fields: ``keys_table()``)."""

    host: str = _key(values.non_empty_str, "passed to each client's `init_before_use`")
    users: int = _key(values.positive_int,
                      "total clients (the closed model); user k starts at `k / hatch_rate` s "
                      "on worker `k mod W`, so shares sum exactly and the ramp is the same "
                      "for any number of workers", default=0,
                      shown="required, unless `arrival_rate`")
    hatch_rate: float = _key(values.positive_number,
                             "clients started per second, over the whole run", default=0.0,
                             shown="`users`")
    arrival_rate: float | None = _key(
        values.positive_number,
        "the open model: calls started per `time_unit` over the whole run, whatever the "
        "server does, split exactly over every worker (see [Open model](#open-model)); "
        "replaces `users`, `hatch_rate` and `wait_time`", default=None, shown="none")
    time_unit: float = _key(values.positive_duration, "the period of `arrival_rate`",
                            default=1.0, shown="`1s`")
    arrivals: str = _key(values.arrival_process,
                         "`uniform` (evenly spaced) or `poisson` (independent, random gaps)",
                         default="uniform", shown="`uniform`")
    max_users: int = _key(values.positive_int,
                          "the open model's clients at most, over the whole run: a call due "
                          "while all are busy starts late, on the first free one", default=0,
                          shown="`1000`, or `pre_allocated_users` if more")
    pre_allocated_users: int = _key(values.non_negative_int,
                                    "of `max_users`, the clients made before the load "
                                    "starts; the others are made when a call finds none "
                                    "free", default=0, shown="`100`, or `max_users` if fewer")
    max_schedule_lag: float = _key(values.positive_duration,
                                   "a call that cannot start this long after its intended "
                                   "start is dropped (counted, not run)", default=10.0,
                                   shown="`10s`")
    run_time: float = _key(values.positive_duration,
                           "how long load runs; then no new calls, in-flight calls get "
                           "`stop_grace`")
    benchmark_class_file: Path = _key(values.non_empty_str,
                                      "the client file (shipped to agents with the job)")
    benchmark_class: str | dict[str, int] = _key(
        values.benchmark_classes, "which `ClientProtocol` subclass to run, or several by "
        "weight: `{Browse: 3, Buy: 1}` (clients split by weight, exactly, over every worker; "
        "see [Load shapes](#load-shapes))", default="", shown="the one subclass")
    wait_time: values.WaitTime = _key(
        values.wait_time, "between a client's calls: a duration slept after each, `[min, "
        "max]` (drawn uniformly), `{pacing: S}` (start to start) or `{throughput: N}` "
        "(calls a second per client)", default=values.WaitTime(), shown="`0`")
    stages: list[values.Stage] = _key(
        values.stages, "the load's shape: `{duration, users}` or `{duration, arrival_rate}` "
        "each, ramped linearly from the last (from 0); sets `run_time` and `users` (or "
        "`arrival_rate`)", default=[], shown="none")
    thresholds: list[Rule] = _key(
        lambda v: parse_thresholds(v, values.parse_duration),
        "rules the run is judged by, exit 6 if one fails: `\"p99 < 250ms\"`, `\"fail_ratio < "
        "1%\"`, or `{rule, name, over: 30s}` (see [Thresholds](#thresholds))", default=[],
        shown="none")
    generator: values.GeneratorRule = _key(
        values.generator, "when the load generator itself is saturated, flagged (`warn`) or "
        "exit 7 (`fail`): `{max_cpu: 90%, max_loop_lag: 20ms, max_behind_schedule: 100ms "
        "(open model), for: 3s, on_saturation: warn}`",
        default=values.GeneratorRule(), shown="`{max_cpu: 90%, max_loop_lag: 20ms, "
        "max_behind_schedule: 100ms, for: 3s, on_saturation: warn}`")
    iterations: int | None = _key(values.iteration_count,
                                  "end the run after this many calls in all (shared exactly "
                                  "over every worker), or at `run_time` if sooner",
                                  default=None, shown="none")
    worker: int | None = _key(values.worker_count,
                              "worker processes per agent; `auto` = the agent's `--workers`, "
                              "its core count", default=None, shown="`auto`")
    enable_dash: bool = _key(values.boolean,
                             "serve the live dashboard (as `--dash`; see [Dashboard](#dashboard))",
                             default=False, shown="`false`")
    print_interval: float = _key(values.positive_duration, "period of the live console block",
                                 default=2.0, shown="`2s`")
    stop_grace: float = _key(values.parse_duration,
                             "how long in-flight calls may finish after the stop; then "
                             "cancelled and counted as failures", default=10.0, shown="`10s`")
    agents: int = _key(values.non_negative_int,
                       "`0` = one embedded local agent; N = wait for N `loadagent start` "
                       "daemons", default=0)
    agent_timeout: float = _key(values.positive_duration,
                                "how long to wait for those N agents (exit code 4 otherwise), "
                                "and then for every worker to be ready (import and "
                                "`global_init`)", default=60.0, shown="`60s`")
    files: list[str] = _key(values.path_list,
                            "extra files and folders to ship to agents, relative paths kept",
                            default=[], shown="`[]`")
    security: dict[str, str] | None = _key(
        values.security, "CURVE keys, as `--key` and `--authorized-agents`: `{key: FOLDER, "
        "authorized_agents: FOLDER}` (see [Security](#security))", default=None, shown="none")
    # not keys: where the config came from, the keys for global_init, what to warn about
    path: Path = Path()
    custom: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


KEYS = tuple(f for f in fields(Config) if "check" in f.metadata)
REQUIRED = tuple(f.name for f in KEYS if f.default is MISSING and f.default_factory is MISSING)
SYSTEM_KEYS = frozenset(f.name for f in KEYS)
assert CUSTOM_KEY not in SYSTEM_KEYS


def keys_table() -> str:
    """The README's table of system keys, in markdown."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{f.name}` | {f.metadata['shown']} | {f.metadata['meaning']} |" for f in KEYS]
    rows.append(f"| `{CUSTOM_KEY}` | (none) | never read by the system: a mapping under it "
                f"reaches `global_init` whole, as `custom_conf[\"{CUSTOM_KEY}\"]` |")
    return "\n".join(rows)


def resolved_keys(cfg: Config) -> dict[str, Any]:
    """Every system key with the value the run uses (defaults, overrides and ``${NAME}``
    applied), as YAML would write it: paths as strings, ``worker`` unset as ``auto``."""
    out: dict[str, Any] = {}
    other = CLOSED_ONLY if cfg.arrival_rate is not None else ("arrival_rate", *OPEN_ONLY)
    for f in KEYS:
        if f.name in other:  # the other model's: not used
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif f.name == "worker" and value is None:
            value = "auto"
        elif isinstance(value, values.WaitTime):
            value = value.shown
        elif isinstance(value, values.GeneratorRule):
            value = {"max_cpu": value.max_cpu, "max_loop_lag": value.max_loop_lag,
                     "max_behind_schedule": value.max_behind_schedule, "for": value.seconds,
                     "on_saturation": "fail" if value.fail else "warn"}
        elif f.name == "thresholds":
            value = [{"rule": r.text, "name": r.name, "over": r.over} for r in value]
        elif f.name == "stages":
            kind = "users" if cfg.arrival_rate is None else "arrival_rate"
            value = [{"duration": s.duration, kind: s.target} for s in value]
        elif isinstance(value, list | dict):
            value = type(value)(value)
        out[f.name] = value
    return out


def _option(key: str) -> str:
    """The command-line option that overrides ``key``: run_time -> --run-time."""
    return "--" + key.replace("_", "-")


def _shown(value: Any) -> str:
    """An override's value as the user typed it: 0, soon, '' (quoted only when needed)."""
    if isinstance(value, str) and value and value.isprintable() and value.split() == [value]:
        return value
    return _short(value)


def _short(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters, so an error never prints a huge value."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for str()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read(path: Path) -> str:
    """The file's text, refused past MAX_CONFIG_BYTES without reading it whole."""
    limit = f"over the {MAX_CONFIG_BYTES // 2**20} MiB limit for a config file"
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{path}: {st.st_size / 2**20:.1f} MiB, {limit}")
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:  # not a regular file, or it grew
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES // 2**20} MiB, {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read the config: not UTF-8 text ({e.reason} at "
                          f"byte {e.start})") from None


class _Cycle(Exception):
    pass


def _alias_values(root: yaml.Node) -> int:
    """How many values aliases add: the expanded tree's size minus the distinct nodes.

    The composed graph is a DAG (an alias is the anchored node object itself), so each
    node's expanded size is computed once, memoised by id. A cycle raises _Cycle.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Cycle
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        active.discard(key)
        sizes[key] = total
        return total

    return size(root) - len(sizes)


def _parse(path: Path, text: str) -> Any:
    """safe_load, but the alias expansion is measured on the node graph before building."""
    stream = io.StringIO(text)
    stream.name = str(path)  # named in YAML's own error messages
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            extra = _alias_values(node)
        except _Cycle:
            raise ConfigError(f"{path}: a YAML alias refers to a value that contains it; "
                              f"refused") from None
        if extra > MAX_ALIAS_VALUES:
            raise ConfigError(f"{path}: YAML aliases expand to more than {MAX_ALIAS_VALUES} "
                              f"values; refused (a 'billion laughs' file?)")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except ConfigError:
        raise
    except ValueError as e:  # int() past Python's digit limit
        raise ConfigError(f"{path}: cannot read a value: {str(e).split(';')[0]}") from None
    finally:
        loader.dispose()


def _scalar(text: str) -> bool | int | float | None:
    """``text`` as YAML reads a number or a boolean; None when it is anything else."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, bool | int | float) else None


def _substitute(path: Path, where: str, value: Any) -> Any:
    """``value`` with ``${NAME}`` in its strings taken from the environment."""
    if isinstance(value, str):
        def env(m: re.Match[str]) -> str:
            if m.group(1):
                return "${"
            found = os.environ.get(m.group(2))
            if found is None:
                raise ConfigError(f"{path}: key {where!r}: ${{{m.group(2)}}} is not set in "
                                  f"the environment")
            return found
        text = _ENV.sub(env, value)
        whole = _ENV.fullmatch(value)
        if whole is not None and whole.group(2):
            scalar = _scalar(text)
            if scalar is not None:
                return scalar
        return text
    if isinstance(value, list):
        return [_substitute(path, f"{where}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(path, f"{where}.{k}", v) for k, v in value.items()}
    return value


def load_config(path: Path, overrides: dict[str, Any] | None = None,
                cwd: Path | None = None) -> Config:
    """Read and check ``path``; ``overrides`` (command-line options) win over the file."""
    raw = _parse(path, _read(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r}: keys must be strings")
    try:
        raw = {key: _substitute(path, key, value) for key, value in raw.items()}
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    return build_config(path, raw, cwd or Path.cwd(), overrides=overrides)


def build_config(path: Path, raw: dict[str, Any], cwd: Path, *,
                 overrides: dict[str, Any] | None = None) -> Config:
    """Check ``raw`` (the file's keys) with ``overrides`` (command-line options) on top.

    An error in an override names the option (``--users 0: ...``), not the file.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    switched = _switched_model(raw, given)
    merged = {**{k: v for k, v in raw.items() if k not in switched}, **given}
    for key in REQUIRED:
        if merged.get(key) is None and not (key == "run_time" and "stages" in merged):
            raise ConfigError(f"{path}: key {key!r} is missing; it is required"
                              f"{_missing_hint(key, raw)}")
    values: dict[str, Any] = {}
    for f in KEYS:
        key, value = f.name, merged.get(f.name)
        if value is None:  # absent, or present with no value (`files:`): the default
            continue
        try:
            values[key] = f.metadata["check"](value)
        except ValueError as e:
            if key in given:
                raise ConfigError(f"{_option(key)} {_shown(value)}: {e}") from None
            raise ConfigError(f"{path}: key {key!r}: {e} (got {_short(value)})") from None
    _shape(path, given, values)
    _model(path, raw, given, values)
    _mix(path, values)
    if not values.get("hatch_rate"):
        values["hatch_rate"] = float(values["users"])
    class_file = Path(values["benchmark_class_file"])
    if not class_file.is_absolute():
        class_file = cwd / class_file
    if not class_file.is_file():
        raise ConfigError(f"{path}: key 'benchmark_class_file': {values['benchmark_class_file']!r} "
                          f"is not a file (relative paths start at {cwd})")
    values["benchmark_class_file"] = class_file
    source = _client_source(class_file)  # (one that does not parse is left to the agents)
    if source is not None:
        _check_classes(path, class_file.name, source, values.get("benchmark_class", ""))
    _check_rules(path, class_file.name, source, values)
    warnings = []
    if "://" not in values["host"]:
        about = (f"{_option('host')} {_shown(merged['host'])}: no scheme" if "host" in given
                 else f"{path}: key 'host': {values['host']!r} has no scheme")
        warnings.append(f"{about} (http://...); the built-in and aiohttp clients will fail "
                        f"every call")
    if switched:
        model = "open" if "arrival_rate" in given else "closed"
        warnings.append(f"{_option('arrival_rate' if model == 'open' else 'users')}: the "
                        f"{model} model; the file's {', '.join(sorted(switched))} ignored")
    custom = {k: v for k, v in merged.items() if k not in SYSTEM_KEYS}
    packed: dict[str, int] = {}
    for key, value in custom.items():
        try:  # exactly what workers will decode
            data = msgpack.packb(value)
            msgpack.unpackb(data, strict_map_key=True)
            packed[key] = len(data)
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(
                f"{path}: key {key!r}: this value cannot be sent to the workers ({e}); "
                f"custom keys hold strings, numbers, booleans, null, lists and mappings "
                f"with string keys (quote a date as a string)") from None
        if key == CUSTOM_KEY:
            continue
        close = difflib.get_close_matches(key, SYSTEM_KEYS, n=1, cutoff=0.8)
        if close:
            warnings.append(f"{path}: key {key!r} is not a system key (did you mean "
                            f"{close[0]!r}?); it is passed to global_init as a custom key")
    if sum(packed.values()) > CUSTOM_CONF_MAX:
        big = max(packed, key=packed.__getitem__)
        raise ConfigError(
            f"{path}: key {big!r}: {format_size(packed[big])} once packed; custom values "
            f"may hold {format_size(CUSTOM_CONF_MAX)} in all ({format_size(sum(packed.values()))}"
            f" here): ship large data as a file (files:, or a path in a custom key) and read "
            f"it in global_init")
    return Config(path=path, custom=custom, warnings=warnings, **values)


def _switched_model(raw: dict[str, Any], given: dict[str, Any]) -> set[str]:
    """The file's keys of the other model when the command line picks one: --arrival-rate
    on a closed-model file, --users (or --hatch-rate) on an open-model one."""
    closed = [k for k in CLOSED_ONLY if k in given]
    if "arrival_rate" in given and not closed:
        return {k for k in CLOSED_ONLY if k in raw}
    if closed and "arrival_rate" not in given:
        return {k for k in ("arrival_rate", *OPEN_ONLY) if k in raw}
    return set()


def _model(path: Path, raw: dict[str, Any], given: dict[str, Any],
           values: dict[str, Any]) -> None:
    """Check the keys of the closed model (``users``) against the open (``arrival_rate``),
    and fill in the open model's pool: ``users`` becomes ``max_users``."""
    def at(key: str) -> str:
        return _at(path, given, key)

    if values.get("arrival_rate") is None:
        if "users" not in values:
            raise ConfigError(f"{path}: key 'users' is missing; it is required (or "
                              f"arrival_rate, for the open model){_missing_hint('users', raw)}")
        for key in OPEN_ONLY:
            if key in values:
                raise ConfigError(f"{at(key)}: only with arrival_rate (the open model); with "
                                  f"users (the closed model) it means nothing")
        return
    for key in CLOSED_ONLY:
        if key in values and not (key == "wait_time" and values[key].none):  # 0: no wait
            raise ConfigError(
                f"{at(key)}: not with arrival_rate: in the open model calls start on the "
                f"schedule, whatever the server does, and max_users and pre_allocated_users "
                f"size the client pool (remove it, or arrival_rate for the closed model)")
    if values["arrival_rate"] / values.get("time_unit", 1.0) > MAX_ARRIVAL_RATE:
        raise ConfigError(f"{at('arrival_rate')}: over {MAX_ARRIVAL_RATE:,.0f} calls a second "
                          f"(with time_unit); no generator starts that many")
    most, pre = values.get("max_users"), values.get("pre_allocated_users")
    if most is not None and pre is not None and pre > most:
        raise ConfigError(f"{at('pre_allocated_users')}: {pre} is over max_users ({most}); "
                          f"it is how many of those max_users clients are made at the start")
    if most is None:
        most = max(DEFAULT_MAX_USERS, pre or 0)
    values["max_users"] = most
    values["pre_allocated_users"] = min(DEFAULT_PRE_ALLOCATED, most) if pre is None else pre
    values["users"] = most


def _client_source(class_file: Path) -> ast.Module | None:
    """The client file's syntax tree (the master never imports it: agents do); None when
    it cannot be read or does not parse."""
    try:
        return ast.parse(class_file.read_bytes(), str(class_file))
    except (SyntaxError, ValueError, OSError):
        return None


def _check_classes(path: Path, file_name: str, tree: ast.Module,
                   chosen: str | dict[str, int]) -> None:
    """Each class ``benchmark_class`` names is defined in the client file, by its source.
    A file that makes classes in a way its source does not show is left to the agents."""
    names = list(chosen) if isinstance(chosen, dict) else [chosen] if chosen else []
    if not names:
        return
    defined: list[str] = []  # classes, in the order they come
    bound: set[str] = set()  # and every other name bound (``Buy = type(...)``, imports)
    body = list(tree.body)
    while body:  # module level, inside blocks too (not in functions or classes)
        node = body.pop(0)
        if isinstance(node, ast.ClassDef):
            defined.append(node.name)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For |
                          ast.AsyncFor | ast.With | ast.AsyncWith | ast.NamedExpr):
                bound.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
            for part in ("body", "orelse", "finalbody", "handlers", "cases"):
                body.extend(getattr(node, part, []))
    missing = [n for n in names if n not in defined and n not in bound]
    if defined and missing:
        raise ConfigError(f"{path}: key 'benchmark_class': {missing[0]!r} is not a class of "
                          f"{file_name} (it defines {', '.join(defined)})")


def _check_rules(path: Path, file_name: str, tree: ast.Module | None,
                 values: dict[str, Any]) -> None:
    """A threshold's window fits in the run, and its name is one the client file can
    count under (a class's name, its ``name = "..."``, or a ``.step("...")``'s), as its
    source shows (``tree``; None: not checked)."""
    rules: list[Rule] = values.get("thresholds", [])
    for i, rule in enumerate(rules):
        if rule.over is not None and rule.over > values["run_time"]:
            raise ConfigError(f"{path}: key 'thresholds': thresholds[{i}] {rule.text!r}: "
                              f"over {rule.over:g}s is longer than the run "
                              f"({values['run_time']:g}s)")
    named = [(i, r) for i, r in enumerate(rules) if r.name is not None]
    if not named or tree is None:
        return
    known = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "name" for t in n.targets) and \
                isinstance(n.value, ast.Constant) and isinstance(n.value.value, str):
            known.add(n.value.value)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and \
                n.func.attr == "step" and n.args and isinstance(n.args[0], ast.Constant) \
                and isinstance(n.args[0].value, str):
            known.add(n.args[0].value)
    for i, rule in named:
        if rule.name not in known:
            raise ConfigError(f"{path}: key 'thresholds': thresholds[{i}] {rule.text!r}: "
                              f"name {rule.name!r} is not a name {file_name} counts "
                              f"calls under (its classes and steps: "
                              f"{', '.join(sorted(known)) or 'none'})")


def _at(path: Path, given: dict[str, Any], key: str) -> str:
    """Where a value came from, for an error: its command-line option, or the file's key."""
    if key in given:
        return f"{_option(key)} {_shown(given[key])}"
    return f"{path}: key {key!r}"


def _shape(path: Path, given: dict[str, Any], values: dict[str, Any]) -> None:
    """With ``stages``: run_time and users (or arrival_rate) derived from them, and an error
    for each given too."""
    def at(key: str) -> str:
        return _at(path, given, key)

    if "stages" not in values:
        return
    kind, stages = values["stages"]
    derived = ("run_time", "users", "hatch_rate") if kind == "users" else (
        "run_time", "arrival_rate")
    for key in derived:
        if key in values:
            raise ConfigError(f"{at(key)}: not with stages, which set the load's shape: "
                              f"run_time is their durations' sum and {kind} their largest "
                              f"target (remove it, or stages)")
    if kind == "users" and "arrival_rate" in values:
        raise ConfigError(f"{at('arrival_rate')}: not with stages of users (the closed "
                          f"model); stages of arrival_rate give the open model its shape")
    if kind == "arrival_rate" and "users" in values:
        raise ConfigError(f"{at('users')}: not with stages of arrival_rate (the open model): "
                          f"max_users sizes its client pool")
    values["stages"] = stages
    values["run_time"] = sum(s.duration for s in stages)
    top = max(s.target for s in stages)
    if kind == "users":
        values["users"] = int(top)
        values["hatch_rate"] = float(top)  # (not used: the stages start the clients)
        return
    if top / values.get("time_unit", 1.0) > MAX_ARRIVAL_RATE:
        i = next(i for i, s in enumerate(stages) if s.target == top)
        raise ConfigError(f"{path}: key 'stages': stages[{i}].arrival_rate: over "
                          f"{MAX_ARRIVAL_RATE:,.0f} calls a second (with time_unit); no "
                          f"generator starts that many")
    values["arrival_rate"] = float(top)


def _mix(path: Path, values: dict[str, Any]) -> None:
    """Every class of a weighted mix gets at least one client (of ``users``, or the open
    model's ``max_users``)."""
    mix = values.get("benchmark_class")
    if not isinstance(mix, dict) or len(mix) < 2:
        return
    clients = values["users"]
    for name, n in zip(mix, class_counts(clients, list(mix.values())), strict=True):
        if not n:
            pool = "max_users" if values.get("arrival_rate") is not None else "users"
            raise ConfigError(f"{path}: key 'benchmark_class': {name} gets no client of the "
                              f"{clients} ({pool}) split by weight; raise {pool} or its "
                              f"weight")


def _missing_hint(key: str, raw: dict[str, Any]) -> str:
    """A near-miss custom key for a missing required one, or the same key under custom:."""
    candidates = [k for k in raw if isinstance(k, str) and k not in SYSTEM_KEYS
                  and k != CUSTOM_KEY]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.8)
    if close:
        return f" (did you mean {key}? the file has {close[0]!r})"
    escape = raw.get(CUSTOM_KEY)
    if isinstance(escape, dict) and key in escape:
        return (f" (the file has it under {CUSTOM_KEY!r}, which only global_init reads; "
                f"put it at the top level)")
    return ""

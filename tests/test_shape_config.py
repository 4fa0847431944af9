"""Load shapes in the config and in the plan: ``stages``, the ``wait_time`` forms,
``iterations`` and weighted ``benchmark_class`` mixes.

The config through ``load_config`` on real YAML files: each accepted form and what it
becomes, each bad input as a ConfigError naming the file and the key (a class the file lacks
too, found in its source). The plan (protocol/plan.py) by
hypothesis: mixes split by weight exactly, and stage windows that run ceil(target) clients
at every moment, whatever the number of workers.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loadmaster.config import ConfigError, resolved_keys
from loadmaster.config_values import Stage
from protocol.plan import (
    RateProfile,
    class_counts,
    class_sequence,
    client_windows,
    clients_of,
    stage_users,
)
from tests.test_config import SEED, load, with_key

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=300)

# the seed's config without the keys stages replace
SHAPELESS = "\n".join(ln for ln in SEED.splitlines()
                      if not ln.startswith(("users:", "hatch_rate:", "run_time:"))) + "\n"


def fails(base: Path, text: str, overrides: dict[str, Any] | None = None) -> str:
    """The ConfigError's text for ``text``, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        load(base, text, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def at_key(base: Path, key: str) -> str:
    """How an error about the file's ``key`` starts."""
    return f"{base / 'conf.yml'}: key {key!r}: "


CLOSED_STAGES = """\
stages:
  - {duration: 1m, users: 100}
  - {duration: 5m, users: 100}
  - {duration: 30s, users: 0}
"""

OPEN_STAGES = """\
stages:
  - {duration: 10s, arrival_rate: 50}
  - {duration: 250ms, arrival_rate: 200}
  - {duration: 5, arrival_rate: 0}
"""



def without_wait(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("wait_time:")) + "\n"


# open-model files: the seed's closed-model wait_time goes too
OPEN_BASE = without_wait(SHAPELESS)


# -- accepted forms -------------------------------------------------------------------------


def test_closed_stages_set_run_time_and_users(base: Path) -> None:
    cfg = load(base, SHAPELESS + CLOSED_STAGES)
    assert cfg.stages == [Stage(60.0, 100), Stage(300.0, 100), Stage(30.0, 0)]
    assert cfg.run_time == 390.0  # the durations' sum
    assert cfg.users == 100  # the largest target
    assert cfg.arrival_rate is None
    assert cfg.warnings == []
    shown = resolved_keys(cfg)
    assert shown["stages"] == [{"duration": 60.0, "users": 100},
                               {"duration": 300.0, "users": 100},
                               {"duration": 30.0, "users": 0}]
    assert shown["run_time"] == 390.0 and shown["users"] == 100


def test_open_stages_set_run_time_and_arrival_rate(base: Path) -> None:
    cfg = load(base, OPEN_BASE + OPEN_STAGES)
    assert cfg.stages == [Stage(10.0, 50), Stage(0.25, 200), Stage(5.0, 0)]
    assert cfg.run_time == pytest.approx(15.25)
    assert cfg.arrival_rate == 200.0
    assert cfg.users == cfg.max_users == 1000  # the pool's default: users is not a target
    assert resolved_keys(cfg)["stages"][1] == {"duration": 0.25, "arrival_rate": 200}


@pytest.mark.parametrize(("stages", "run_time", "users"), [
    ("[{duration: 0, users: 5}, {duration: 2, users: 5}]", 2.0, 5),  # a jump at T0
    ("[{duration: 3, users: 0}, {duration: 1, users: 2}]", 4.0, 2),  # idle first
    ("[{duration: 1, users: 4}, {duration: 0s, users: 1}, {duration: 1, users: 3}]", 2.0, 4),
    ("[{duration: 1h30m, users: 1}]", 5400.0, 1),
])
def test_more_closed_stage_forms(base: Path, stages: str, run_time: float, users: int) -> None:
    cfg = load(base, SHAPELESS + f"stages: {stages}\n")
    assert (cfg.run_time, cfg.users) == (run_time, users)


@pytest.mark.parametrize(("text", "low", "high", "pacing"), [
    ("0.1", 0.1, 0.1, 0.0),
    ('"250ms"', 0.25, 0.25, 0.0),
    ("0", 0.0, 0.0, 0.0),
    ("[0.05, 0.15]", 0.05, 0.15, 0.0),
    ('[0, "2s"]', 0.0, 2.0, 0.0),
    ("[1, 1]", 1.0, 1.0, 0.0),  # a constant wait
    ("{pacing: 0.1}", 0.0, 0.0, 0.1),
    ('{pacing: "2s"}', 0.0, 0.0, 2.0),
    ("{throughput: 10}", 0.0, 0.0, 0.1),
    ("{throughput: 0.5}", 0.0, 0.0, 2.0),
])
def test_wait_time_forms(base: Path, text: str, low: float, high: float,
                         pacing: float) -> None:
    wait = load(base, with_key("wait_time", text)).wait_time
    assert (wait.low, wait.high) == (low, high)
    assert wait.pacing == pytest.approx(pacing)
    assert resolved_keys(load(base, with_key("wait_time", text)))["wait_time"] is not None


def test_iterations_and_a_mix_are_accepted(base: Path) -> None:
    (base / "client.py").write_text("class Browse: pass\nclass Buy: pass\nclass A: pass\n")
    cfg = load(base, SEED + "iterations: 1001\nbenchmark_class: {Browse: 3, Buy: 1}\n")
    assert cfg.iterations == 1001
    assert cfg.benchmark_class == {"Browse": 3, "Buy": 1}
    assert list(cfg.benchmark_class) == ["Browse", "Buy"]  # the file's order
    assert load(base, SEED + "benchmark_class: Browse\n").benchmark_class == "Browse"
    assert load(base, SEED).iterations is None
    # everything at once, open model too
    cfg = load(base, OPEN_BASE + OPEN_STAGES + "iterations: 5\nbenchmark_class: {A: 1}\n")
    assert (cfg.iterations, cfg.benchmark_class) == (5, {"A": 1})


# -- errors that name the key -------------------------------------------------------------

BAD: dict[str, tuple[str, str, str]] = {
    # case: (YAML added to the config without users/hatch_rate/run_time, key, accepted)
    "stages mixing users and arrival_rate": (
        "stages: [{duration: 1, users: 2}, {duration: 1, arrival_rate: 5}]", "stages",
        "stages[1]: arrival_rate where the first stage has users"),
    "a negative duration": (
        "stages: [{duration: 1, users: 2}, {duration: -1, users: 0}]", "stages",
        "stages[1].duration: expected a duration >= 0"),
    "a negative duration with a unit": (
        'stages: [{duration: "-5s", users: 2}]', "stages",
        "stages[0].duration: expected a duration >= 0"),
    "an empty stages list": ("stages: []", "stages", "expected a list of stages"),
    "stages not a list": ("stages: {duration: 1, users: 2}", "stages",
                          "expected a list of stages"),
    "a stage without a target": ("stages: [{duration: 1s}]", "stages",
                                 "stages[0]: expected {duration: DURATION, users: N}"),
    "a stage without a duration": ("stages: [{users: 3}]", "stages",
                                   "stages[0]: expected {duration"),
    "a stage with an extra key": ("stages: [{duration: 1, users: 3, hold: 2}]", "stages",
                                  "stages[0]: expected {duration"),
    "a stage's unknown target": ("stages: [{duration: 1, clients: 3}]", "stages",
                                 "stages[0]: 'clients' is not a stage's target"),
    "a negative user target": ("stages: [{duration: 1, users: -3}]", "stages",
                               "stages[0].users: expected a whole number of at least 0"),
    "a fractional user target": ("stages: [{duration: 1, users: 2.5}]", "stages",
                                 "stages[0].users: expected a whole number"),
    "a negative rate target": ("stages: [{duration: 1, arrival_rate: -3}]", "stages",
                               "stages[0].arrival_rate: expected a number above 0, or 0"),
    "stages of 0 s in all": ("stages: [{duration: 0, users: 3}]", "stages",
                             "the stages last 0 seconds in all"),
    "stages of 0 users": ("stages: [{duration: 2, users: 0}]", "stages",
                          "every stage's users is 0"),
    "a weight over a million": ("users: 2\nrun_time: 1\nbenchmark_class: {Browse: 1000001}",
                                "benchmark_class", "weight 1000001: expected a whole number"),
    "a class with no client": ("users: 2\nrun_time: 1\nbenchmark_class: {Browse: 3, Buy: 1}",
                               "benchmark_class", "Buy gets no client of the 2 (users)"),
    "too many stages": ("stages: [" + ", ".join(["{duration: 1, users: 1}"] * 1001) + "]",
                        "stages", "1001 stages; at most 1000"),
    "stages of endless time": ("stages: [{duration: 1e308, users: 1}, {duration: 1e308, "
                               "users: 1}]", "stages", "at most 3.16224e+07 (a year)"),
    "too many iterations": ("users: 2\nrun_time: 1\niterations: 10000000000000000000",
                            "iterations", "expected at most 1,000,000,000,000,000 calls"),
    "a weight of 0": ("users: 2\nrun_time: 1\nbenchmark_class: {Browse: 3, Buy: 0}",
                      "benchmark_class", "Buy: weight 0: expected a whole number from 1"),
    "a negative weight": ("users: 2\nrun_time: 1\nbenchmark_class: {Browse: -1}",
                          "benchmark_class", "weight -1"),
    "a fractional weight": ("users: 2\nrun_time: 1\nbenchmark_class: {Browse: 1.5}",
                            "benchmark_class", "weight 1.5"),
    "a weight true": ("users: 2\nrun_time: 1\nbenchmark_class: {Browse: true}",
                      "benchmark_class", "weight True"),
    "an empty mix": ("users: 2\nrun_time: 1\nbenchmark_class: {}", "benchmark_class",
                     "expected a class name, or a mapping of class names to weights"),
    "a mix of a non-name": ("users: 2\nrun_time: 1\nbenchmark_class: {my-class: 1}",
                            "benchmark_class", "'my-class' is not a class name"),
    "a list of classes": ("users: 2\nrun_time: 1\nbenchmark_class: [A, B]",
                          "benchmark_class", "expected a class name"),
    "[max, min] reversed": ("users: 2\nrun_time: 1\nwait_time: [0.15, 0.05]", "wait_time",
                            "[min, max] with min over max (0.15s > 0.05s): write [0.05, 0.15]"),
    "[1]": ("users: 2\nrun_time: 1\nwait_time: [1]", "wait_time",
            "expected a duration (sleep after each call), [min, max]"),
    "[1, 2, 3]": ("users: 2\nrun_time: 1\nwait_time: [1, 2, 3]", "wait_time", "[min, max]"),
    "[-1, 2]": ("users: 2\nrun_time: 1\nwait_time: [-1, 2]", "wait_time",
                "[min, max]: expected a duration >= 0"),
    "[a, 2]": ("users: 2\nrun_time: 1\nwait_time: [soon, 2]", "wait_time",
               "[min, max]: expected a duration such as"),
    "pacing 0": ("users: 2\nrun_time: 1\nwait_time: {pacing: 0}", "wait_time",
                 "pacing: expected a duration > 0"),
    "pacing soon": ("users: 2\nrun_time: 1\nwait_time: {pacing: soon}", "wait_time",
                    "pacing: expected a duration"),
    "throughput -1": ("users: 2\nrun_time: 1\nwait_time: {throughput: -1}", "wait_time",
                      "throughput: expected a number above 0 (calls a second, per client)"),
    "throughput 0": ("users: 2\nrun_time: 1\nwait_time: {throughput: 0}", "wait_time",
                     "throughput: expected a number above 0"),
    "foo 1": ("users: 2\nrun_time: 1\nwait_time: {foo: 1}", "wait_time",
              "{pacing: DURATION} (start to start) or {throughput: N}"),
    "pacing and throughput": ("users: 2\nrun_time: 1\nwait_time: {pacing: 1, throughput: 1}",
                              "wait_time", "{pacing: DURATION}"),
    "wait_time true": ("users: 2\nrun_time: 1\nwait_time: true", "wait_time",
                       "expected a duration"),
    "iterations 0": ("users: 2\nrun_time: 1\niterations: 0", "iterations",
                     "expected a whole number of at least 1"),
    "iterations -5": ("users: 2\nrun_time: 1\niterations: -5", "iterations",
                      "at least 1"),
    "iterations 2.5": ("users: 2\nrun_time: 1\niterations: 2.5", "iterations",
                       "whole number"),
    "iterations true": ("users: 2\nrun_time: 1\niterations: true", "iterations",
                        "whole number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_shapes_name_the_file_the_key_and_what_is_accepted(base: Path, case: str) -> None:
    extra, key, accepted = BAD[case]
    text = (without_wait(SHAPELESS) if "wait_time" in extra else SHAPELESS) + extra + "\n"
    message = fails(base, text)
    assert message.startswith(at_key(base, key)), message
    assert accepted in message, message


@pytest.mark.parametrize(("extra", "key"), [
    ("run_time: 30", "run_time"),
    ("users: 10", "users"),
    ("hatch_rate: 2", "hatch_rate"),
])
def test_closed_stages_with_a_key_they_set_name_that_key(base: Path, extra: str,
                                                         key: str) -> None:
    message = fails(base, SHAPELESS + CLOSED_STAGES + extra + "\n")
    assert message.startswith(at_key(base, key) + "not with stages"), message
    assert "remove it, or stages" in message


@pytest.mark.parametrize(("extra", "key", "says"), [
    ("run_time: 30", "run_time", "not with stages"),
    ("arrival_rate: 100", "arrival_rate", "not with stages"),
    ("users: 10", "users", "not with stages of arrival_rate"),
])
def test_open_stages_with_a_key_they_set_name_that_key(base: Path, extra: str, key: str,
                                                       says: str) -> None:
    message = fails(base, OPEN_BASE + OPEN_STAGES + extra + "\n")
    assert message.startswith(at_key(base, key) + says), message


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"users": 5}, "--users 5: not with stages"),
    ({"run_time": "10s"}, "--run-time 10s: not with stages"),
    ({"hatch_rate": 3.0}, "--hatch-rate 3.0: not with stages"),
])
def test_an_override_of_a_key_stages_set_names_the_option(
        base: Path, overrides: dict[str, Any], expected: str) -> None:
    assert fails(base, SHAPELESS + CLOSED_STAGES, overrides).startswith(expected)


def test_arrival_rate_on_the_command_line_with_stages_of_users_names_the_option(
        base: Path) -> None:
    """The file's stages are of users; --arrival-rate picks the open model. The error
    names what the user typed, not a ``users`` key the file does not have."""
    message = fails(base, without_wait(SHAPELESS) + CLOSED_STAGES, {"arrival_rate": 50})
    assert message.startswith("--arrival-rate 50: not with stages of users"), message
    # and the other way round: --users on a file of arrival_rate stages
    message = fails(base, OPEN_BASE + OPEN_STAGES, {"users": 5})
    assert message.startswith("--users 5: not with stages of arrival_rate"), message


# -- the plan: mixes ------------------------------------------------------------------------


@pytest.mark.parametrize(("users", "weights", "counts"), [
    (8, [3, 1], [6, 2]),
    (4, [3, 1], [3, 1]),
    (2, [3, 1], [2, 0]),  # remainders tie: the first class
    (1, [1, 1], [1, 0]),
    (10, [1, 1, 1], [4, 3, 3]),
    (7, [5, 2], [5, 2]),
    (0, [3, 1], [0, 0]),
    (5, [1, 2, 2], [1, 2, 2]),
    (6, [1, 1, 1, 1], [2, 2, 1, 1]),
])
def test_class_counts_examples(users: int, weights: list[int], counts: list[int]) -> None:
    assert class_counts(users, weights) == counts


def test_class_sequence_interleaves_a_mix() -> None:
    assert class_sequence(8, [3, 1]) == [0, 0, 1, 0, 0, 0, 1, 0]
    assert class_sequence(4, [1, 1]) == [0, 1, 0, 1]
    assert class_sequence(2, [3, 1]) == [0, 0]


weights_st = st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=10)


@FAST
@given(st.integers(min_value=0, max_value=5000), weights_st)
def test_class_counts_sum_to_users_each_within_one_of_its_share(
        users: int, weights: list[int]) -> None:
    counts = class_counts(users, weights)
    assert len(counts) == len(weights)
    assert sum(counts) == users
    total = sum(weights)
    for count, weight in zip(counts, weights, strict=True):
        share = Fraction(users * weight, total)
        assert abs(count - share) < 1
        assert math.floor(share) <= count <= math.ceil(share)
    # the extra clients went to the largest remainders (the first class on a tie)
    got = [c for c, (n, w) in enumerate(zip(counts, weights, strict=True))
           if n > users * w // total]
    missed = [c for c in range(len(weights)) if c not in got]
    for c in got:
        for d in missed:
            rc, rd = users * weights[c] % total, users * weights[d] % total
            assert rc > rd or (rc == rd and c < d)


@FAST
@given(st.integers(min_value=0, max_value=2000), weights_st)
def test_class_sequence_has_exactly_the_counts_spread_over_the_clients(
        users: int, weights: list[int]) -> None:
    seq = class_sequence(users, weights)
    counts = class_counts(users, weights)
    assert len(seq) == users
    assert Counter(seq) == Counter({c: n for c, n in enumerate(counts) if n})
    # spread, not in blocks: each prefix (the first clients a ramp starts) holds every
    # class's share of it within 2 (a measured bound; blocks would be off by far more)
    seen = [0] * len(weights)
    for m, c in enumerate(seq, 1):
        seen[c] += 1
        for d, n in enumerate(counts):
            assert abs(seen[d] - Fraction(m * n, users)) < 2


# -- the plan: stages ---------------------------------------------------------------------

duration_st = st.one_of(st.just(0.0), st.floats(min_value=0.01, max_value=1000))
stages_st = st.lists(st.tuples(duration_st, st.integers(min_value=0, max_value=40)),
                     min_size=1, max_size=6)


def windows_of_every_client(workers: int,
                            stages: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Client k's windows at index k, gathered from every worker's plan."""
    users = int(max(t for _, t in stages))
    out: list[list[tuple[float, float]]] = [[] for _ in range(users)]
    for w in range(workers):
        mine = client_windows(w, workers, stages)
        assert len(mine) == clients_of(w, workers, users)
        for i, spans in enumerate(mine):
            out[w + i * workers] = spans
    return out


def sample_times(clients: list[list[tuple[float, float]]]) -> list[float]:
    """Moments away from every start and end: the midpoints between them (those more
    than a microsecond apart), and one after the last."""
    points = sorted({p for spans in clients for span in spans for p in span
                     if p != math.inf} | {0.0})
    mids = [(a + b) / 2 for a, b in itertools.pairwise(points) if b - a > 1e-6]
    return [*mids, points[-1] + 1.0]


@FAST
@given(stages_st, st.integers(min_value=1, max_value=9))
def test_at_any_moment_ceil_target_clients_run_over_every_worker(
        stages: list[tuple[float, float]], workers: int) -> None:
    """Client k runs while the target is above k: at a moment when the target is x,
    the clients 0 .. ceil(x) - 1 run, ceil(x) of them, whatever the workers."""
    clients = windows_of_every_client(workers, stages)
    for t in sample_times(clients):
        running = [k for k, spans in enumerate(clients) if any(a <= t < b for a, b in spans)]
        assert running == list(range(math.ceil(stage_users(stages, t)))), t


@FAST
@given(stages_st, st.integers(min_value=1, max_value=9))
def test_the_same_clients_run_at_the_same_times_whatever_the_workers(
        stages: list[tuple[float, float]], workers: int) -> None:
    assert windows_of_every_client(workers, stages) == client_windows(0, 1, stages)


@FAST
@given(stages_st, st.integers(min_value=1, max_value=9))
# found by hypothesis: a fall to k at a stage's end and a rise from k right after
# overlap by a float's last digit: [0, 12.101) then [12.100999999999999, inf)
@example([(0.0, 27), (4.646, 23), (7.455, 17), (35.592, 22)], 1)
@example([(0.0, 29), (11.979, 14), (0.0, 30), (0.0, 20)], 1)
def test_each_clients_windows_are_sorted_and_disjoint(
        stages: list[tuple[float, float]], workers: int) -> None:
    for w in range(workers):
        for spans in client_windows(w, workers, stages):
            for start, end in spans:
                assert 0 <= start < end
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end <= start, spans


def test_up_plateau_down_windows() -> None:
    stages = [(3.0, 6.0), (3.0, 6.0), (3.0, 0.0)]
    # client k starts at k/2 s, and stops as the target falls to k: 6 + (6 - k)/2 s
    assert client_windows(0, 1, stages) == [[(k / 2, 6 + (6 - k) / 2)] for k in range(6)]
    assert client_windows(1, 2, stages) == [[(k / 2, 6 + (6 - k) / 2)] for k in (1, 3, 5)]
    assert [stage_users(stages, t) for t in (0, 1.5, 3, 4.5, 6, 7.5, 9, 20)] == [
        0, 3, 6, 6, 6, 3, 0, 0]


def test_a_client_stops_and_starts_again_as_the_target_falls_and_rises() -> None:
    stages = [(0.0, 4.0), (2.0, 0.0), (2.0, 4.0)]
    assert client_windows(0, 1, stages) == [
        [(0.0, 2.0), (2.0, math.inf)],  # the target touches 0 at 2 s: off, and on again
        [(0.0, 1.5), (2.5, math.inf)],
        [(0.0, 1.0), (3.0, math.inf)],
        [(0.0, 0.5), (3.5, math.inf)],
    ]
    # a jump up and straight down again: clients 1-4 reach their target for no time,
    # and never run
    assert client_windows(0, 1, [(1.0, 1.0), (0.0, 5.0), (0.0, 1.0), (1.0, 1.0)]) == [
        [(0.0, math.inf)], [], [], [], []]


CLASSES = """\
import os

class Browse: pass

if os.environ.get("NEVER_SET_ANYWHERE"):
    class Buy(Browse): pass
else:
    try:
        class Sell(Browse): pass
    except ImportError:
        class Rent(Browse): pass

def make():
    class Hidden(Browse): pass
"""


@pytest.mark.parametrize(("chosen", "missing"), [
    ("Browse", None), ("{Browse: 1, Buy: 2}", None), ("{Sell: 1, Rent: 1}", None),
    ("Nope", "Nope"), ("{Browse: 1, Hidden: 1}", "Hidden"), ("{Nope: 1, Gone: 1}", "Nope"),
    # a name the file binds otherwise (an import here) is left to the agents: the error
    # names the one it does not bind at all
    ("{os: 1, Nope: 1}", "Nope"),
])
def test_a_class_the_client_file_lacks_is_found_in_its_source(
        base: Path, chosen: str, missing: str | None) -> None:
    """Classes at module level, under if/try too, count; one inside a function does not
    (the agents' loader would not find it either)."""
    (base / "client.py").write_text(CLASSES)
    text = with_key("benchmark_class", chosen)
    if missing is None:
        load(base, text)
        return
    assert fails(base, text) == (f"{at_key(base, 'benchmark_class')}{missing!r} is not a "
                                 f"class of client.py (it defines Browse, Buy, Sell, Rent)")


def test_a_client_file_that_does_not_parse_is_left_to_the_agents(base: Path) -> None:
    (base / "client.py").write_text("class Browse(:\n")
    assert load(base, with_key("benchmark_class", "Nope")).benchmark_class == "Nope"


@FAST
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 5.0, 10.0, 11.979]),
                          st.sampled_from([0.0, 1.0, 5.5, 10.0, 20.0, 100.0 / 3])),
                min_size=1, max_size=5),
       st.sampled_from([1.0, 60.0]))
@example([(10.0, 20.0), (5.0, 0.0), (10.0, 100.0)], 60.0)  # a ramp to 0, then up
@example([(0.0, 5.5), (10.0, 0.0), (1.0, 10.0)], 1.0)
def test_open_stages_put_every_arrival_in_the_run_in_order(
        stages: list[tuple[float, float]], unit: float) -> None:
    """Uniform arrivals of an open-model ramp: as many as its rate's integral gives, each
    at a finite moment of the run, in order (a float's rounding at a ramp's end down to 0
    once gave one no moment at all, and crashed the worker)."""
    run_time = sum(d for d, _ in stages)
    if not run_time or not max(r for _, r in stages):
        return
    profile = RateProfile(max(r for _, r in stages), unit, stages)
    n = profile.arrivals_before(run_time)
    times = [profile.due(g) for g in range(n)]
    assert all(0 <= t < run_time for t in times)
    assert times == sorted(times)
    assert abs(n - profile.count(run_time)) <= 1

"""Tests for protocol.plan: one global timeline of client starts over every worker."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.plan import client_offsets, clients_of

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=300)


def shares(workers: int, users: int) -> list[int]:
    return [clients_of(w, workers, users) for w in range(workers)]


@pytest.mark.parametrize(("workers", "users", "expected"), [
    (3, 7, [3, 2, 2]),
    (4, 1, [1, 0, 0, 0]),
    (4, 0, [0, 0, 0, 0]),
    (1, 5, [5]),
    (5, 5, [1, 1, 1, 1, 1]),
    (7, 1000, [143, 143, 143, 143, 143, 143, 142]),
    (2, 3, [2, 1]),
])
def test_clients_of_awkward_numbers(workers: int, users: int, expected: list[int]) -> None:
    assert shares(workers, users) == expected
    assert sum(shares(workers, users)) == users


@FAST
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=100_000))
def test_clients_of_sums_exactly_and_is_even(workers: int, users: int) -> None:
    s = shares(workers, users)
    assert sum(s) == users
    assert max(s) - min(s) <= 1
    assert s == sorted(s, reverse=True)  # the first workers take the remainder


def merged_offsets(workers: int, users: int, hatch_rate: float) -> list[float]:
    out: list[float] = []
    for w in range(workers):
        mine = client_offsets(w, workers, users, hatch_rate)
        assert len(mine) == clients_of(w, workers, users)
        assert mine == sorted(mine)
        out += mine
    return sorted(out)


@pytest.mark.parametrize(("workers", "users", "hatch_rate"), [
    (4, 10, 1.0), (3, 7, 2.0), (7, 1000, 33.0), (4, 1, 1.0), (4, 0, 5.0), (1, 6, 0.5),
    (16, 5, 0.25), (5, 100, 100.0),
])
def test_client_offsets_follow_one_global_ramp(workers: int, users: int, hatch_rate: float) -> None:
    assert merged_offsets(workers, users, hatch_rate) == [k / hatch_rate for k in range(users)]


def test_hatch_rate_one_over_four_workers_starts_one_user_a_second() -> None:
    starts = merged_offsets(4, 8, 1.0)
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert client_offsets(1, 4, 8, 1.0) == [1.0, 5.0]
    # no two users start at once, whichever worker runs them
    assert len(set(starts)) == len(starts)


@FAST
@given(st.integers(min_value=1, max_value=64), st.integers(min_value=0, max_value=2000),
       st.fractions(min_value=Fraction(1, 100), max_value=1000, max_denominator=100))
def test_client_offsets_random(workers: int, users: int, rate: Fraction) -> None:
    hatch_rate = float(rate)
    assert merged_offsets(workers, users, hatch_rate) == [k / hatch_rate for k in range(users)]
    # user k runs on worker k mod W
    for w in range(workers):
        assert client_offsets(w, workers, users, hatch_rate) == [
            k / hatch_rate for k in range(users) if k % workers == w]

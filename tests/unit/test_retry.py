"""Backoff: exponential ceilings, a cap, and full jitter. Pure: no database, no clock."""

from __future__ import annotations

import doctest
import random
import statistics

import pytest

import jobq.retry
from jobq.retry import Backoff


def test_doctests() -> None:
    failures, tried = doctest.testmod(jobq.retry)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (8, 60.0),
     (61, 60.0), (62, 60.0), (10_000, 60.0)],
)
def test_ceiling_doubles_until_the_cap(attempt: int, ceiling: float) -> None:
    b = Backoff(base=1, cap=60)
    assert b.ceiling(attempt) == ceiling
    assert isinstance(b.ceiling(attempt), float)


def test_ceiling_with_a_fractional_base() -> None:
    b = Backoff(base=0.25, cap=5)
    assert [b.ceiling(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_ceiling_is_monotonic_and_never_above_the_cap() -> None:
    b = Backoff(base=3, cap=1000)
    ceilings = [b.ceiling(n) for n in range(1, 200)]
    assert ceilings == sorted(ceilings)
    assert max(ceilings) == 1000.0


def test_attempt_zero_or_negative_uses_the_base() -> None:
    b = Backoff(base=2, cap=100)
    assert b.ceiling(0) == b.ceiling(-5) == 2.0


def test_cap_below_base_wins() -> None:
    assert Backoff(base=10, cap=4).ceiling(1) == 4.0


def test_zero_base_never_waits() -> None:
    b = Backoff(base=0, cap=0)
    assert all(b.delay(n) == 0.0 for n in range(1, 50))


def test_delay_is_the_ceiling_scaled_by_the_random_draw() -> None:
    b = Backoff(base=2, cap=10)
    assert b.delay(3, rand=lambda: 0.0) == 0.0
    assert b.delay(3, rand=lambda: 0.5) == 4.0
    assert b.delay(3, rand=lambda: 0.999999) == pytest.approx(8.0, abs=1e-4)
    assert b.delay(20, rand=lambda: 0.5) == 5.0


@pytest.mark.parametrize("attempt", [1, 2, 5, 9, 100])
def test_full_jitter_stays_within_zero_and_the_ceiling(attempt: int) -> None:
    b = Backoff(base=0.5, cap=30)
    rng = random.Random(attempt)
    ceiling = b.ceiling(attempt)
    draws = [b.delay(attempt, rand=rng.random) for _ in range(5000)]
    assert all(0.0 <= d <= ceiling for d in draws)
    # Full jitter: spread over the whole range, not clustered near the ceiling.
    assert min(draws) < 0.05 * ceiling
    assert max(draws) > 0.95 * ceiling
    assert statistics.fmean(draws) == pytest.approx(ceiling / 2, rel=0.05)


def test_default_random_source_spreads_the_delays() -> None:
    b = Backoff(base=1, cap=60)
    draws = [b.delay(4) for _ in range(1000)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    assert len(set(draws)) > 900  # jobs failing together must not retry together


def test_same_draw_gives_the_same_delay() -> None:
    b = Backoff(base=1, cap=60)
    assert b.delay(5, rand=random.Random(3).random) == b.delay(5, rand=random.Random(3).random)


def test_backoff_is_immutable() -> None:
    b = Backoff(base=1, cap=2)
    with pytest.raises(AttributeError):
        b.cap = 5  # type: ignore[misc]

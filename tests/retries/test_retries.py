"""The shared retry backoff: its delay sequence, jitter bounds, reset and give-up clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from retries import Backoff, Policy


class _Top:
    """A random source that always draws the top of the range."""

    def uniform(self, a: float, b: float, /) -> float:
        return b


class _Bottom:
    def uniform(self, a: float, b: float, /) -> float:
        return a


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_from_first_up_to_the_cap() -> None:
    backoff = Backoff(Policy(first=0.1, cap=1.0), rng=_Top())
    assert [round(backoff.next(), 6) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert backoff.attempts == 7


def test_jitter_draws_from_the_upper_half_by_default() -> None:
    backoff = Backoff(Policy(first=0.1, cap=1.0), rng=_Bottom())
    assert [round(backoff.next(), 6) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


def test_jitter_stays_inside_its_range_with_a_real_generator() -> None:
    policy = Policy(first=0.2, cap=5.0)
    rng = random.Random(7)
    for attempt in range(1, 40):
        top = policy.ceiling(attempt)
        assert top / 2 <= policy.delay(attempt, rng) <= top


def test_a_seeded_generator_gives_the_same_sequence_twice() -> None:
    def run() -> list[float]:
        backoff = Backoff(Policy(first=0.5, cap=30.0), rng=random.Random(42))
        return [backoff.next() for _ in range(10)]

    assert run() == run()


def test_no_jitter_gives_the_ceiling_itself() -> None:
    backoff = Backoff(Policy(first=1.0, cap=1.0, jitter=0.0), rng=_Bottom())
    assert [backoff.next() for _ in range(3)] == [1.0, 1.0, 1.0]


def test_reset_after_success_starts_again_from_first() -> None:
    backoff = Backoff(Policy(first=0.1, cap=5.0), rng=_Top())
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == pytest.approx(0.1)


def test_a_first_delay_above_the_cap_is_capped() -> None:
    assert Policy(first=2.0, cap=1.0).ceiling(1) == 1.0


def test_a_very_long_outage_stays_at_the_cap() -> None:
    policy = Policy(first=0.1, cap=5.0)
    assert policy.ceiling(10_000) == 5.0


def test_give_up_counts_from_construction_and_again_after_reset() -> None:
    clock = _Clock()
    backoff = Backoff(Policy(first=1.0, cap=2.0, give_up=10.0), rng=_Top(), clock=clock)
    backoff.next()
    clock.now += 10.0
    assert not backoff.exhausted  # exactly the give-up time: one more try
    clock.now += 0.5
    assert backoff.exhausted
    backoff.reset()
    assert not backoff.exhausted
    clock.now += 50.0
    backoff.next()  # the clock restarts at the first failure after the reset
    clock.now += 9.0
    assert not backoff.exhausted


def test_without_give_up_it_is_never_exhausted() -> None:
    clock = _Clock()
    backoff = Backoff(Policy(first=1.0, cap=2.0), clock=clock)
    backoff.next()
    clock.now += 1e9
    assert not backoff.exhausted


@pytest.mark.parametrize(
    ("first", "cap", "jitter"), [(0.0, 1.0, 0.5), (0.1, 0.0, 0.5), (0.1, 1.0, 1.5)]
)
def test_a_policy_that_makes_no_sense_is_refused(first: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Policy(first=first, cap=cap, jitter=jitter)


def test_sleep_returns_early_when_stop_is_set() -> None:
    async def main() -> float:
        stop = asyncio.Event()
        stop.set()
        backoff = Backoff(Policy(first=3600.0, cap=3600.0), rng=_Top())
        async with asyncio.timeout(5):
            return await backoff.sleep(stop)

    assert asyncio.run(main()) == 3600.0

"""The simulated clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from firmware_sim import SimClock

REAL0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()


class FakeTime:
    def __init__(self) -> None:
        self.now = REAL0

    def __call__(self) -> float:
        return self.now


def test_clock_runs_speed_times_faster_then_catches_up_and_runs_at_real_time() -> None:
    real = FakeTime()
    start = datetime.fromtimestamp(REAL0, UTC) - timedelta(hours=1)
    clock = SimClock(start, speed=61.0, real_now=real)
    real.now += 30.0
    assert clock.now() == start.timestamp() + 30.0 * 61.0
    real.now = REAL0 + 60.0
    assert clock.now() == real.now
    real.now = REAL0 + 3600.0
    assert clock.now() == real.now


def test_a_start_in_the_future_starts_now() -> None:
    real = FakeTime()
    clock = SimClock(datetime.fromtimestamp(REAL0 + 999, UTC), speed=10.0, real_now=real)
    assert clock.now() == REAL0


@given(
    behind=st.floats(min_value=0.0, max_value=1e8),
    speed=st.floats(min_value=0.01, max_value=1e6),
    elapsed=st.floats(min_value=0.0, max_value=1e7),
)
def test_simulated_time_never_runs_ahead_of_real_time(
    behind: float, speed: float, elapsed: float
) -> None:
    real = FakeTime()
    clock = SimClock(datetime.fromtimestamp(REAL0 - behind, UTC), speed=speed, real_now=real)
    real.now += elapsed
    assert clock.now() <= real.now
    # A simulated moment is reached no earlier than the real moment it names.
    assert clock.real_time_of(clock.now()) >= clock.now() - 1e-6

"""Chart helpers: the bucket step for a point budget, and largest-triangle downsampling."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.downsample import NICE_STEPS, lttb, nice_step

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_year_at_two_thousand_points_takes_six_hour_buckets() -> None:
    step = nice_step(timedelta(days=365), 2000)
    assert step == timedelta(hours=6)


@given(st.integers(min_value=1, max_value=10**8), st.integers(min_value=1, max_value=10_000))
def test_nice_step_respects_the_budget_unless_the_span_is_huge(seconds: int, budget: int) -> None:
    span = timedelta(seconds=seconds)
    step = nice_step(span, budget)
    assert step in NICE_STEPS
    if step != NICE_STEPS[-1]:
        assert span / step <= budget


def test_lttb_keeps_the_ends_and_a_lone_spike() -> None:
    points = [(T0 + timedelta(minutes=i), 0.0) for i in range(1000)]
    points[377] = (points[377][0], 50.0)
    kept = lttb(points, 20)
    assert len(kept) == 20
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert points[377] in kept


@given(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=300), st.integers(0, 400))
def test_lttb_returns_source_points_in_order(values: list[float], threshold: int) -> None:
    points = [(T0 + timedelta(seconds=i), v) for i, v in enumerate(values)]
    kept = lttb(points, threshold)
    assert kept == sorted(kept, key=lambda p: p[0])
    assert set(kept) <= set(points)
    expected = len(points) if threshold >= len(points) or threshold < 3 else threshold
    assert len(kept) == expected


def test_nice_step_refuses_an_empty_budget() -> None:
    with pytest.raises(ValueError, match="max_points"):
        nice_step(timedelta(hours=1), 0)
    assert math.isclose(nice_step(timedelta(hours=1), 60).total_seconds(), 60)

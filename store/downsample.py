"""Pure helpers for charts: a readable step for a range, and largest-triangle downsampling."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

# Steps a chart may use, finest first: each divides the next coarser ones within a day, so
# buckets line up with the stored 1-minute and 1-hour aggregates.
NICE_STEPS: Final = tuple(
    timedelta(seconds=s)
    for s in (
        1, 5, 10, 15, 30,
        60, 120, 300, 600, 900, 1800,
        3600, 7200, 10800, 21600, 43200,
        86400, 2 * 86400, 7 * 86400, 28 * 86400,
    )
)  # fmt: skip


def nice_step(span: timedelta, max_points: int) -> timedelta:
    """The finest step in NICE_STEPS that splits `span` into at most `max_points` buckets."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    for step in NICE_STEPS:
        if span / step <= max_points:
            return step
    return NICE_STEPS[-1]


def lttb(points: Sequence[tuple[datetime, float]], threshold: int) -> list[tuple[datetime, float]]:
    """Largest-Triangle-Three-Buckets (Steinarsson, 2013): `threshold` points that keep the shape.

    The first and last points stay; each bucket in between keeps the point forming the largest
    triangle with the point kept before it and the average of the next bucket.
    """
    n = len(points)
    if threshold >= n or threshold < 3:
        return list(points)
    xs = [p[0].timestamp() for p in points]
    ys = [p[1] for p in points]
    every = (n - 2) / (threshold - 2)
    kept = [points[0]]
    a = 0
    for i in range(threshold - 2):
        start = int(i * every) + 1
        end = int((i + 1) * every) + 1
        next_end = min(int((i + 2) * every) + 1, n)
        nxt = range(end, next_end) if end < next_end else range(n - 1, n)
        avg_x = sum(xs[j] for j in nxt) / len(nxt)
        avg_y = sum(ys[j] for j in nxt) / len(nxt)
        best, best_area = start, -1.0
        for j in range(start, end):
            area = abs((xs[a] - avg_x) * (ys[j] - ys[a]) - (xs[a] - xs[j]) * (avg_y - ys[a]))
            if area > best_area:
                best, best_area = j, area
        kept.append(points[best])
        a = best
    kept.append(points[-1])
    return kept

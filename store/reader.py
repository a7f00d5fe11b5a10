"""The read interface ingest, streams and the CLI share: raw pages, buckets, latest, chart series.

`StoreReader` runs on a sync psycopg connection, `AsyncStoreReader` on an async one; both
run the same queries (store/read.py) on either backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import psycopg

from store.aggregates import LEVELS, Level
from store.downsample import lttb, nice_step
from store.errors import StoreError
from store.read import (
    Bucket,
    LevelChoice,
    Pool,
    RawKey,
    RawPage,
    Reading,
    Selection,
    align,
    bucket_rows,
    buckets_query,
    choose_level,
    latest_query,
    latest_rows,
    raw_page,
    raw_query,
)

logger = logging.getLogger(__name__)

Method = Literal["minmax", "lttb"]
# A page of raw rows: large enough to amortise a round trip, small enough for one response.
DEFAULT_PAGE: Final = 10_000
# LTTB picks its points from at most this many evenly spaced source points per output point:
# enough to keep every visible peak, while a year of one device stays a fraction of a second.
_LTTB_SOURCE_FACTOR: Final = 25


@dataclass(frozen=True, slots=True)
class Point:
    """One point of a chart series: the bucket's start, average and envelope."""

    time: datetime
    value: float
    min: float
    max: float
    count: int


class StoreReader:
    """Reads on one sync connection (autocommit is best: reads hold no transaction open)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def raw_range(
        self,
        sel: Selection,
        start: datetime,
        end: datetime,
        *,
        after: RawKey | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> RawPage:
        """Readings in [start, end) ordered by (time, device_id); `limit` counts messages."""
        query, params = raw_query(sel, start, end, after=after, limit=limit)
        return raw_page(sel, self._conn.execute(query, params).fetchall(), limit)

    def buckets(
        self,
        sel: Selection,
        start: datetime,
        end: datetime,
        step: timedelta,
        *,
        pool: Pool = "device",
        level: LevelChoice = "auto",
    ) -> list[Bucket]:
        """Aggregates by `step`, from the coarsest stored level that tiles it (or raw rows)."""
        first, last = align(start, end, step)
        chosen = choose_level(step, level)
        query, params = buckets_query(sel, first, last, step, pool=pool, level=chosen)
        return bucket_rows(sel, self._conn.execute(query, params).fetchall())

    def latest(self, sel: Selection) -> list[Reading]:
        query, params = latest_query(sel)
        return latest_rows(sel, self._conn.execute(query, params).fetchall())

    def series(
        self,
        sel: Selection,
        start: datetime,
        end: datetime,
        *,
        max_points: int = 2000,
        method: Method = "minmax",
    ) -> list[Point]:
        """One device's metric (or a pool's) as at most ~`max_points` points for a chart."""
        step, level = _series_plan(sel, start, end, max_points, method)
        rows = self.buckets(sel, start, end, step, level=level, pool=_pool(sel))
        return _series_points(rows, max_points, method)


class AsyncStoreReader:
    """The same reads on an async connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def raw_range(
        self,
        sel: Selection,
        start: datetime,
        end: datetime,
        *,
        after: RawKey | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> RawPage:
        query, params = raw_query(sel, start, end, after=after, limit=limit)
        cur = await self._conn.execute(query, params)
        return raw_page(sel, await cur.fetchall(), limit)

    async def buckets(
        self,
        sel: Selection,
        start: datetime,
        end: datetime,
        step: timedelta,
        *,
        pool: Pool = "device",
        level: LevelChoice = "auto",
    ) -> list[Bucket]:
        first, last = align(start, end, step)
        chosen = choose_level(step, level)
        query, params = buckets_query(sel, first, last, step, pool=pool, level=chosen)
        cur = await self._conn.execute(query, params)
        return bucket_rows(sel, await cur.fetchall())

    async def latest(self, sel: Selection) -> list[Reading]:
        query, params = latest_query(sel)
        cur = await self._conn.execute(query, params)
        return latest_rows(sel, await cur.fetchall())

    async def series(
        self,
        sel: Selection,
        start: datetime,
        end: datetime,
        *,
        max_points: int = 2000,
        method: Method = "minmax",
    ) -> list[Point]:
        step, level = _series_plan(sel, start, end, max_points, method)
        rows = await self.buckets(sel, start, end, step, level=level, pool=_pool(sel))
        return _series_points(rows, max_points, method)


def _series_plan(
    sel: Selection, start: datetime, end: datetime, max_points: int, method: Method
) -> tuple[timedelta, LevelChoice]:
    """The bucket step to read, and from which level, for a chart series."""
    if len(sel.chosen_metrics) != 1:
        raise StoreError("a series is one metric: name it")
    if end <= start:
        raise StoreError("a series needs end after start")
    if method == "minmax":
        # Each bucket carries its min and max: spikes survive however coarse the step.
        return nice_step(end - start, max_points), "auto"
    # LTTB picks real points from a finer series; the stored level that tiles it keeps the
    # read cheap (a year of one device from hourly buckets is ~9,000 rows).
    step = nice_step(end - start, max_points * _LTTB_SOURCE_FACTOR)
    level: Level | None = None
    for candidate in LEVELS:
        if step >= candidate.width:
            level = candidate
    if level is None:
        return step, "raw"
    return level.width * (step // level.width), "auto"


def _pool(sel: Selection) -> Pool:
    return "device" if sel.device_ids is not None and len(sel.device_ids) == 1 else "district"


def _series_points(rows: list[Bucket], max_points: int, method: Method) -> list[Point]:
    points = [
        Point(r.bucket, r.avg, r.min, r.max, r.count)
        for r in rows
        if r.avg is not None and r.min is not None and r.max is not None
    ]
    if method == "minmax" or len(points) <= max_points:
        return points
    by_time = {p.time: p for p in points}
    kept = lttb([(p.time, p.value) for p in points], max_points)
    return [by_time[t] for t, _ in kept]

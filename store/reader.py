"""The read interface ingest, streams and the CLI share: raw pages, buckets, latest, chart series.

`StoreReader` runs on a sync psycopg connection, `AsyncStoreReader` on an async one; both
run the same queries (store/read.py) on either backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import psycopg

from store import query as q
from store.aggregates import LEVELS, Level
from store.downsample import lttb, nice_step
from store.errors import StoreError
from store.query import RawKey, Scope
from store.read import (
    Bucket,
    LevelChoice,
    Pool,
    RawPage,
    Reading,
    Selection,
    bucket_rows,
    choose_level,
    latest_rows,
    pooled_rows,
    raw_page,
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
        query, params = q.raw(sel.scope(), start=start, end=end, after=after, limit=limit)
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
        """Aggregates by `step` over [start, end) widened to whole steps: per device from the
        level silobreak_agg_level() picks, or pooled per district from released buckets."""
        first, last = q.widen(start, end, step)
        if pool == "district":
            scope = sel.scope(pool=pool, step=step)
            last = q.sealed_end(last, step, _now(), q.DEFAULT_SEAL_GRACE)
            release(self._conn, scope, first, last)
            query, params = q.pooled(scope, first, last)
            return pooled_rows(sel, self._conn.execute(query, params).fetchall())
        query, params = q.buckets(sel.scope(), first, last, step, level=choose_level(step, level))
        return bucket_rows(sel, self._conn.execute(query, params).fetchall())

    def latest(self, sel: Selection) -> list[Reading]:
        query, params = q.latest(sel.scope())
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
        query, params = q.raw(sel.scope(), start=start, end=end, after=after, limit=limit)
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
        first, last = q.widen(start, end, step)
        if pool == "district":
            scope = sel.scope(pool=pool, step=step)
            last = q.sealed_end(last, step, _now(), q.DEFAULT_SEAL_GRACE)
            await release_async(self._conn, scope, first, last)
            query, params = q.pooled(scope, first, last)
            cur = await self._conn.execute(query, params)
            return pooled_rows(sel, await cur.fetchall())
        query, params = q.buckets(sel.scope(), first, last, step, level=choose_level(step, level))
        cur = await self._conn.execute(query, params)
        return bucket_rows(sel, await cur.fetchall())

    async def latest(self, sel: Selection) -> list[Reading]:
        query, params = q.latest(sel.scope())
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


def release(conn: psycopg.Connection[Any], scope: Scope, start: datetime, end: datetime) -> int:
    """Release the pooled buckets of [start, end) (whole and sealed) not released yet;
    returns how many runs of buckets it released."""
    width = _width(scope)
    if end <= start:
        return 0
    with conn.transaction():
        conn.execute(*q.release_lock(scope.device_type, width))
        done = [r[0] for r in conn.execute(*q.released_query(scope.device_type, width, start, end))]
        spans = q.missing_spans(done, start, end, width)
        for first, last in spans:
            for stmt in q.release_statements(scope.device_type, width, first, last):
                conn.execute(*stmt)
    return len(spans)


async def release_async(
    conn: psycopg.AsyncConnection[Any], scope: Scope, start: datetime, end: datetime
) -> int:
    """release() on an async connection."""
    width = _width(scope)
    if end <= start:
        return 0
    async with conn.transaction():
        await conn.execute(*q.release_lock(scope.device_type, width))
        cur = await conn.execute(*q.released_query(scope.device_type, width, start, end))
        done = [r[0] for r in await cur.fetchall()]
        spans = q.missing_spans(done, start, end, width)
        for first, last in spans:
            for stmt in q.release_statements(scope.device_type, width, first, last):
                await conn.execute(*stmt)
    return len(spans)


def _width(scope: Scope) -> timedelta:
    if not scope.pooled or scope.interval is None:
        raise StoreError("only a pooled scope with an interval has buckets to release")
    return scope.interval


def _now() -> datetime:
    return datetime.now(UTC)


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
    # A pooled bucket has no envelope (its min and max would be one device's readings).
    points = [
        Point(r.bucket, r.avg, r.min if r.min is not None else r.avg,
              r.max if r.max is not None else r.avg, r.count)
        for r in rows
        if r.avg is not None
    ]  # fmt: skip
    if method == "minmax" or len(points) <= max_points:
        return points
    by_time = {p.time: p for p in points}
    kept = lttb([(p.time, p.value) for p in points], max_points)
    return [by_time[t] for t, _ in kept]

"""Aggregates under a grant: whole grant intervals, per device or pooled per district.

Both come from the store's one read path (store/query.py). Per-device buckets are read from
the level `silobreak_agg_level()` picks (the hourly or per-minute views when they tile the
interval, raw rows otherwise): avg, min, max and count. District pools come from the ledger
of released buckets: sum, avg, count and devices, never a min, max or last (each is one
device's own reading), over at least the pool minimum of devices and of readings, and only
once sealed (bucket end plus the grace period), after which they never change.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from store import query as store_query
from store.query import BucketKey
from store.reader import release_async
from streams.scope import Scope

logger = logging.getLogger(__name__)

AggregateKey = BucketKey


async def aggregates(
    conn: psycopg.AsyncConnection[Any],
    scope: Scope,
    *,
    start: datetime,
    end: datetime,
    after: AggregateKey | None,
    limit: int,
    min_pool: int,
    grace: timedelta = store_query.DEFAULT_SEAL_GRACE,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """A page of aggregate rows, as the API returns them (no raw `value`, ever).

    [start, end) is narrowed to whole grant intervals: a request can never cut a bucket
    short. `raw` reads per-device buckets from raw rows (a check that levels agree)."""
    store_scope = scope.store_scope(min_pool=min_pool)
    assert store_scope.interval is not None
    step = store_scope.interval
    first, last = store_query.whole_buckets(start, end, step)
    if store_scope.pooled:
        last = store_query.sealed_end(last, step, datetime.now(UTC), grace)
        if last <= first:
            return []
        await release_async(conn, store_scope, first, last)
        query, params = store_query.pooled(store_scope, first, last, after=after, limit=limit)
        cur = await conn.execute(query, params)
        return [
            {
                "bucket": bucket,
                "device_id": None,
                "device_type": scope.device_type,
                "service": service,
                "district": district or None,
                "metric": metric,
                "sum": total,
                "avg": avg,
                "count": count,
                "devices": devices,
            }
            for bucket, service, district, metric, total, avg, count, devices in (
                await cur.fetchall()
            )
        ]
    if last <= first:
        return []
    query, params = store_query.buckets(
        store_scope, first, last, step, level="raw" if raw else "auto", after=after, limit=limit
    )
    cur = await conn.execute(query, params)
    return [
        {
            "bucket": bucket,
            "device_id": device_id,
            "device_type": scope.device_type,
            "service": service,
            "district": district,
            "metric": metric,
            "avg": avg,
            "min": lo,
            "max": hi,
            "count": count,
        }
        for bucket, device_id, service, district, metric, avg, lo, hi, count, _last in (
            await cur.fetchall()
        )
    ]


def key_of(row: dict[str, Any]) -> AggregateKey:
    group = row["device_id"] if row["device_id"] is not None else (row["district"] or "")
    return AggregateKey(row["bucket"], group, row["metric"])

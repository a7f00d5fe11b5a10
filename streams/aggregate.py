"""Aggregates under a grant: bucket, avg, min, max, count per device or pooled per district.

Computed with `date_bin` over the wide readings tables (what TimescaleDB's `time_bucket`
does); `bucket_query` is the one place to switch to the store's rollups once they exist:
a rollup row holds the same (bucket, device, metric, avg, min, max, count).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from streams.scope import POOL_DISTRICT, Scope

logger = logging.getLogger(__name__)

# Buckets are aligned to this origin, as time_bucket's are (a Saturday, 2000-01-01 UTC).
ORIGIN: Final = "2000-01-01 00:00:00+00"


@dataclass(frozen=True, slots=True)
class AggregateKey:
    """Where a page of aggregates ends: the next page starts after it."""

    bucket: datetime
    group: str
    metric: str


def bucket_query(scope: Scope, *, min_devices: int) -> tuple[sql.Composed, dict[str, Any]]:
    """Aggregates of `scope` over [start, end) by `interval`, after a key, `limit` rows.

    Parameters to add: start, end, interval (timedelta), limit, and the key (k_bucket,
    k_group, k_metric; k_bucket NULL for the first page).
    """
    where, params = scope.where()
    values = sql.SQL(", ").join(
        sql.SQL("({}, r.{}::float8)").format(sql.Literal(m), sql.Identifier(m))
        for m in scope.metrics
    )
    pooled = scope.grant.pool == POOL_DISTRICT
    group = sql.SQL("coalesce(d.district, '')" if pooled else "r.device_id")
    having = sql.SQL("HAVING count(DISTINCT r.device_id) >= %(min_devices)s" if pooled else "")
    params["min_devices"] = min_devices
    query = sql.SQL(
        "SELECT * FROM ("
        " SELECT date_bin(%(interval)s, r.time, {origin}) AS bucket, {group} AS grp,"
        "  m.metric, min(d.district) AS district, r.service,"
        "  avg(m.value), min(m.value), max(m.value), count(m.value),"
        "  count(DISTINCT r.device_id) AS devices"
        " FROM {table} r JOIN devices d USING (device_id)"
        " CROSS JOIN LATERAL (VALUES {values}) AS m(metric, value)"
        " WHERE {where} AND m.value IS NOT NULL"
        "  AND r.time >= %(start)s AND r.time < %(end)s"
        " GROUP BY 1, 2, 3, r.service {having}) AS a"
        " WHERE %(k_bucket)s::timestamptz IS NULL"
        "  OR (bucket, grp, metric) > (%(k_bucket)s, %(k_group)s, %(k_metric)s)"
        " ORDER BY bucket, grp, metric LIMIT %(limit)s"
    ).format(
        origin=sql.Literal(ORIGIN),
        group=group,
        table=sql.Identifier(scope.table),
        values=values,
        where=where,
        having=having,
    )
    return query, params


async def aggregates(
    conn: psycopg.AsyncConnection[Any],
    scope: Scope,
    *,
    start: datetime,
    end: datetime,
    after: AggregateKey | None,
    limit: int,
    min_pool: int,
) -> list[dict[str, Any]]:
    """A page of aggregate rows, as the API returns them (no raw `value`, ever)."""
    grant = scope.grant
    assert grant.interval_s is not None
    min_devices = max(grant.min_devices or 0, min_pool) if grant.pool == POOL_DISTRICT else 1
    query, params = bucket_query(scope, min_devices=min_devices)
    params.update(
        start=start,
        end=end,
        interval=timedelta(seconds=grant.interval_s),
        limit=limit,
        k_bucket=after.bucket if after else None,
        k_group=after.group if after else None,
        k_metric=after.metric if after else None,
    )
    cur = await conn.execute(query, params)
    pooled = grant.pool == POOL_DISTRICT
    out = []
    for bucket, grp, metric, district, service, avg, lo, hi, count, devices in await cur.fetchall():
        row: dict[str, Any] = {
            "bucket": bucket,
            "device_id": None if pooled else grp,
            "device_type": scope.device_type,
            "service": service,
            "district": district,
            "metric": metric,
            "avg": avg,
            "min": lo,
            "max": hi,
            "count": count,
        }
        if pooled:
            row["devices"] = devices
        out.append(row)
    return out


def key_of(row: dict[str, Any]) -> AggregateKey:
    group = row["device_id"] if row["device_id"] is not None else (row["district"] or "")
    return AggregateKey(row["bucket"], group, row["metric"])

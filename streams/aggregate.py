"""Aggregates under a grant: bucket, avg, min, max, count per device or pooled per district.

Read from the store's per-device aggregate views (`agg_1h_<type>`, `agg_1m_<type>`) when
the grant's buckets and the requested range are whole hours or minutes, else computed with
`date_bin` over the wide readings tables (what TimescaleDB's `time_bucket` does). Both give
the same answers: a view row keeps each metric's sum, count, min and max, which add up
exactly to any coarser bucket and to a pool of devices (avg = Σsum / Σcount).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from store.aggregates import LEVELS, Level
from store.aggregates import ORIGIN as STORE_ORIGIN
from store.schema import RAW_AVG, STORED_AVG, energy_metrics, energy_weight
from streams.scope import POOL_DISTRICT, Scope

logger = logging.getLogger(__name__)

# Buckets are aligned to this origin (a Saturday, 2000-01-01 UTC). The store's views use
# 2000-01-03: both are midnights, so an hour or a minute of a view falls inside one bucket
# of any interval that is a whole number of hours or minutes.
ORIGIN: Final = "2000-01-01 00:00:00+00"


@dataclass(frozen=True, slots=True)
class AggregateKey:
    """Where a page of aggregates ends: the next page starts after it."""

    bucket: datetime
    group: str
    metric: str


def level_for(interval: timedelta, start: datetime, end: datetime) -> Level | None:
    """The coarsest aggregate view that gives the same answer as raw rows; None: raw rows.

    Its width must divide `interval` (each view bucket lies inside one of ours) and `start`
    and `end` must be view bucket boundaries (the view buckets in the range hold exactly
    the readings in it).
    """
    for level in reversed(LEVELS):
        width = level.width
        if (
            interval >= width
            and interval % width == timedelta(0)
            and (start - STORE_ORIGIN) % width == timedelta(0)
            and (end - STORE_ORIGIN) % width == timedelta(0)
        ):
            return level
    return None


def bucket_query(
    scope: Scope, *, min_devices: int, level: Level | None = None
) -> tuple[sql.Composed, dict[str, Any]]:
    """Aggregates of `scope` over [start, end) by `interval`, after a key, `limit` rows.

    `level`: the aggregate view to read (see level_for(); the caller checks it fits), or
    None for raw rows. Parameters to add: start, end, interval (timedelta), limit, and the
    key (k_bucket, k_group, k_metric; k_bucket NULL for the first page).
    """
    energy = energy_metrics(scope.device_type)
    if level is None:
        where, params = scope.where()
        values = sql.SQL(", ").join(
            sql.SQL("({}, r.{}::float8, {})").format(
                sql.Literal(m), sql.Identifier(m), sql.SQL(energy_weight(m, energy))
            )
            for m in scope.metrics
        )
        time = sql.SQL("r.time")
        source = sql.Identifier(scope.table)
        unpivot = sql.SQL("(VALUES {}) AS m(metric, v, w)").format(values)
        stats = sql.SQL(RAW_AVG + ", min(m.v), max(m.v), count(m.v)")
        present = sql.SQL("m.v IS NOT NULL")
    else:
        where, params = scope.where(_counted)
        values = sql.SQL(", ").join(
            sql.SQL("({}, {}, {})").format(
                sql.Literal(m),
                sql.SQL(", ").join(
                    sql.SQL("r.{}").format(sql.Identifier(f"{m}_{stat}"))
                    for stat in ("sum", "count", "min", "max")
                ),
                sql.Literal(m in energy),
            )
            for m in scope.metrics
        )
        time = sql.SQL("r.bucket")
        source = sql.Identifier(level.view(scope.device_type))
        unpivot = sql.SQL("(VALUES {}) AS m(metric, s, c, lo, hi, e)").format(values)
        stats = sql.SQL(STORED_AVG + ", min(m.lo), max(m.hi), sum(m.c)::bigint")
        present = sql.SQL("m.c > 0")
    pooled = scope.grant.pool == POOL_DISTRICT
    group = sql.SQL("coalesce(d.district, '')" if pooled else "r.device_id")
    having = sql.SQL("HAVING count(DISTINCT r.device_id) >= %(min_devices)s" if pooled else "")
    params["min_devices"] = min_devices
    query = sql.SQL(
        "SELECT * FROM ("
        " SELECT date_bin(%(interval)s, {time}, {origin}) AS bucket, {group} AS grp,"
        "  m.metric, min(d.district) AS district, r.service, {stats},"
        "  count(DISTINCT r.device_id) AS devices"
        " FROM {source} r JOIN devices d USING (device_id)"
        " CROSS JOIN LATERAL {unpivot}"
        " WHERE {where} AND {present}"
        "  AND {time} >= %(start)s AND {time} < %(end)s"
        " GROUP BY 1, 2, 3, r.service {having}) AS a"
        " WHERE %(k_bucket)s::timestamptz IS NULL"
        "  OR (bucket, grp, metric) > (%(k_bucket)s, %(k_group)s, %(k_metric)s)"
        " ORDER BY bucket, grp, metric LIMIT %(limit)s"
    ).format(
        time=time,
        origin=sql.Literal(ORIGIN),
        group=group,
        stats=stats,
        source=source,
        unpivot=unpivot,
        where=where,
        present=present,
        having=having,
    )
    return query, params


def _counted(metric: str) -> sql.Composable:
    return sql.SQL("r.{} > 0").format(sql.Identifier(f"{metric}_count"))


async def aggregates(
    conn: psycopg.AsyncConnection[Any],
    scope: Scope,
    *,
    start: datetime,
    end: datetime,
    after: AggregateKey | None,
    limit: int,
    min_pool: int,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """A page of aggregate rows, as the API returns them (no raw `value`, ever).

    From an aggregate view when one fits (see level_for()), from raw rows otherwise or with
    `raw`.
    """
    grant = scope.grant
    assert grant.interval_s is not None
    interval = timedelta(seconds=grant.interval_s)
    min_devices = max(grant.min_devices or 0, min_pool) if grant.pool == POOL_DISTRICT else 1
    level = None if raw else level_for(interval, start, end)
    query, params = bucket_query(scope, min_devices=min_devices, level=level)
    params.update(
        start=start,
        end=end,
        interval=interval,
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

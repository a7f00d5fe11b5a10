"""The read interface's queries: raw ranges by key, bucketed aggregates, latest per device.

Pure: each function returns SQL and parameters, and shapes rows into results; store/reader.py
runs them on a sync or async connection. The SQL is the same on both backends: the
aggregate views have the same names and columns under TimescaleDB and plain PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from psycopg import sql

from store.aggregates import LEVELS_BY_NAME, ORIGIN, Level, level_for
from store.errors import StoreError
from store.schema import RAW_AVG, READINGS_TABLES, STORED_AVG, energy_metrics, energy_weight

Query = tuple[sql.Composed, dict[str, Any]]
Pool = Literal["device", "district"]
LevelChoice = Literal["auto", "raw", "1m", "1h"]
POOLS: Final = ("device", "district")

# Row layouts the shapers below read.
_RAW_FIXED: Final = 4  # time, device_id, service, district, then the metrics


@dataclass(frozen=True, slots=True)
class Selection:
    """Which readings of one device type: metrics (empty: all), devices, owner, district."""

    device_type: str
    metrics: tuple[str, ...] = ()
    device_ids: tuple[str, ...] | None = None
    service: str | None = None
    district: str | None = None

    def __post_init__(self) -> None:
        table = READINGS_TABLES.get(self.device_type)
        if table is None:
            raise StoreError(
                f"unknown device type {self.device_type!r} (one of {', '.join(READINGS_TABLES)})"
            )
        unknown = [m for m in self.metrics if m not in table.metric_columns]
        if unknown:
            raise StoreError(
                f"{self.device_type} has no metric {unknown[0]!r} "
                f"(its metrics: {', '.join(table.metric_columns)})"
            )

    @property
    def table(self) -> str:
        return READINGS_TABLES[self.device_type].name

    @property
    def chosen_metrics(self) -> tuple[str, ...]:
        """The selected metrics in catalog order."""
        names = READINGS_TABLES[self.device_type].metric_columns
        return names if not self.metrics else tuple(m for m in names if m in self.metrics)


@dataclass(frozen=True, slots=True)
class Reading:
    """One stored value, as the contract delivers readings."""

    time: datetime
    device_id: str
    device_type: str
    service: str
    district: str | None
    metric: str
    value: float


@dataclass(frozen=True, slots=True)
class RawKey:
    """The last (time, device_id) of a page: the next page starts after it."""

    time: datetime
    device_id: str


@dataclass(frozen=True, slots=True)
class RawPage:
    readings: list[Reading]
    next: RawKey | None  # None: the range is exhausted


@dataclass(frozen=True, slots=True)
class Bucket:
    """An aggregate over [bucket, bucket + step): per device, or pooled over a district."""

    bucket: datetime
    device_id: str | None  # None when pooled
    device_type: str
    service: str
    district: str | None
    metric: str
    avg: float | None
    min: float | None
    max: float | None
    count: int
    last: float | None  # None when pooled
    devices: int  # devices with a value in the bucket (1 per device)


def align(start: datetime, end: datetime, step: timedelta) -> tuple[datetime, datetime]:
    """[start, end) widened to whole buckets of `step` (aligned as time_bucket aligns them)."""
    if step <= timedelta(0):
        raise StoreError("step must be positive")
    first = ORIGIN + ((start - ORIGIN) // step) * step
    last = ORIGIN + -((ORIGIN - end) // step) * step
    return first, last


def choose_level(step: timedelta, level: LevelChoice) -> Level | None:
    """The stored level a bucketed read uses (None: raw rows)."""
    if level == "raw":
        return None
    if level == "auto":
        return level_for(step)
    chosen = LEVELS_BY_NAME[level]
    if step < chosen.width or step % chosen.width:
        raise StoreError(f"a step of {step} cannot be built from {chosen.name} buckets")
    return chosen


def raw_query(
    sel: Selection, start: datetime, end: datetime, *, after: RawKey | None, limit: int
) -> Query:
    """Wide rows of `sel` in [start, end), in (time, device_id) order, after `after`."""
    conds, params = _filters(sel, "r.time")
    params.update(start=start, end=end, limit=limit)
    if after is not None:
        conds.append(sql.SQL("(r.time, r.device_id) > (%(a_time)s, %(a_dev)s)"))
        params.update(a_time=after.time, a_dev=after.device_id)
    metrics = sel.chosen_metrics
    if sel.metrics:
        conds.append(_any_present(metrics))
    query = sql.SQL(
        "SELECT r.time, r.device_id, r.service, d.district, {metrics}"
        " FROM {table} r LEFT JOIN devices d USING (device_id)"
        " WHERE {conds} ORDER BY r.time, r.device_id LIMIT %(limit)s"
    ).format(
        metrics=sql.SQL(", ").join(
            sql.SQL("r.{}::float8").format(sql.Identifier(m)) for m in metrics
        ),
        table=sql.Identifier(sel.table),
        conds=sql.SQL(" AND ").join(conds),
    )
    return query, params


def raw_page(sel: Selection, rows: Sequence[tuple[Any, ...]], limit: int) -> RawPage:
    metrics = sel.chosen_metrics
    out: list[Reading] = []
    for row in rows:
        at, device_id, service, district = row[:_RAW_FIXED]
        for metric, value in zip(metrics, row[_RAW_FIXED:], strict=True):
            if value is not None:
                out.append(
                    Reading(at, device_id, sel.device_type, service, district, metric, value)
                )
    last = RawKey(rows[-1][0], rows[-1][1]) if len(rows) == limit and rows else None
    return RawPage(out, last)


def buckets_query(
    sel: Selection,
    start: datetime,
    end: datetime,
    step: timedelta,
    *,
    pool: Pool,
    level: Level | None,
) -> Query:
    """Aggregates of `sel` by `step` over [start, end) (aligned first: see align())."""
    if pool not in POOLS:
        raise StoreError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    time_col = "r.time" if level is None else "r.bucket"
    conds, params = _filters(sel, time_col)
    params.update(start=start, end=end, step=step, origin=ORIGIN)
    src = _raw_source(sel) if level is None else _aggregate_source(sel, level)
    if pool == "device":
        select = sql.SQL("r.device_id, r.service, d.district, m.metric, {}, 1").format(src.stats)
        group = sql.SQL("r.device_id, r.service, d.district, m.metric")
        order = sql.SQL("1, 2, 5, 3")
    else:
        select = sql.SQL(
            "NULL::text, r.service, d.district, m.metric, {}, NULL::float8,"
            " count(DISTINCT r.device_id)"
        ).format(src.pooled)
        group = sql.SQL("r.service, d.district, m.metric")
        order = sql.SQL("1, 4, 5, 3")
    query = sql.SQL(
        "SELECT date_bin(%(step)s, {time}, %(origin)s) AS b, {select}"
        " FROM {source} r LEFT JOIN devices d USING (device_id)"
        " CROSS JOIN LATERAL {unpivot}"
        " WHERE {conds} AND {present}"
        " GROUP BY 1, {group} ORDER BY {order}"
    ).format(
        time=sql.SQL(time_col),
        select=select,
        source=src.source,
        unpivot=src.unpivot,
        conds=sql.SQL(" AND ").join(conds),
        present=src.present,
        group=group,
        order=order,
    )
    return query, params


@dataclass(frozen=True, slots=True)
class _Source:
    """Where bucketed values come from, unpivoted one row per metric as `m`."""

    source: sql.Composable
    unpivot: sql.Composable
    present: sql.Composable
    stats: sql.Composable  # avg, min, max, count, last of one device
    pooled: sql.Composable  # avg, min, max, count over several devices


def _raw_source(sel: Selection) -> _Source:
    energy = energy_metrics(sel.device_type)
    values = sql.SQL(", ").join(
        sql.SQL("({}, r.{}::float8, {})").format(
            sql.Literal(m), sql.Identifier(m), sql.SQL(energy_weight(m, energy))
        )
        for m in sel.chosen_metrics
    )
    common = RAW_AVG + ", min(m.v), max(m.v), count(m.v)::bigint"
    return _Source(
        source=sql.Identifier(sel.table),
        unpivot=sql.SQL("(VALUES {}) AS m(metric, v, w)").format(values),
        present=sql.SQL("m.v IS NOT NULL"),
        stats=sql.SQL(common + ", (array_agg(m.v ORDER BY r.time DESC))[1]"),
        pooled=sql.SQL(common),
    )


def _aggregate_source(sel: Selection, level: Level) -> _Source:
    stats = ("sum", "count", "min", "max", "last")
    energy = energy_metrics(sel.device_type)
    values = sql.SQL(", ").join(
        sql.SQL("({}, {}, {})").format(
            sql.Literal(m),
            sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(f"{m}_{s}")) for s in stats),
            sql.Literal(m in energy),
        )
        for m in sel.chosen_metrics
    )
    # Exact for any step the level tiles: sums and counts add up, min/max/last combine.
    common = STORED_AVG + ", min(m.lo), max(m.hi), sum(m.c)::bigint"
    return _Source(
        source=sql.Identifier(level.view(sel.device_type)),
        unpivot=sql.SQL("(VALUES {}) AS m(metric, s, c, lo, hi, last, e)").format(values),
        present=sql.SQL("m.c > 0"),
        stats=sql.SQL(
            common
            + ", (array_agg(m.last ORDER BY r.bucket DESC) FILTER (WHERE m.last IS NOT NULL))[1]"
        ),
        pooled=sql.SQL(common),
    )


def bucket_rows(sel: Selection, rows: Sequence[tuple[Any, ...]]) -> list[Bucket]:
    return [
        Bucket(
            b, dev, sel.device_type, svc, district, metric, avg, lo, hi, int(count), last, int(n)
        )
        for b, dev, svc, district, metric, avg, lo, hi, count, last, n in rows
    ]


def latest_query(sel: Selection) -> Query:
    """Per device and metric, the value with the latest reading time (not the latest arrival)."""
    params: dict[str, Any] = {"device_type": sel.device_type}
    dev_conds = [sql.SQL("d.device_type = %(device_type)s")]
    if sel.device_ids is not None:
        dev_conds.append(sql.SQL("d.device_id = ANY(%(ids)s)"))
        params["ids"] = list(sel.device_ids)
    if sel.district is not None:
        dev_conds.append(sql.SQL("d.district = %(district)s"))
        params["district"] = sel.district
    owner = sql.SQL("")
    if sel.service is not None:
        owner = sql.SQL(" AND r.service = %(service)s")
        params["service"] = sel.service
    parts = [
        sql.SQL(
            "SELECT x.time, d.device_id, x.service, d.district, {name}, x.v FROM devices d"
            " CROSS JOIN LATERAL (SELECT r.time, r.service, r.{col}::float8 AS v FROM {table} r"
            " WHERE r.device_id = d.device_id AND r.{col} IS NOT NULL{owner}"
            " ORDER BY r.time DESC LIMIT 1) x WHERE {conds}"
        ).format(
            name=sql.Literal(m),
            col=sql.Identifier(m),
            table=sql.Identifier(sel.table),
            owner=owner,
            conds=sql.SQL(" AND ").join(dev_conds),
        )
        for m in sel.chosen_metrics
    ]
    query = sql.SQL("{} ORDER BY 2, 5").format(sql.SQL(" UNION ALL ").join(parts))
    return query, params


def latest_rows(sel: Selection, rows: Sequence[tuple[Any, ...]]) -> list[Reading]:
    return [
        Reading(at, dev, sel.device_type, svc, district, metric, value)
        for at, dev, svc, district, metric, value in rows
    ]


def _filters(sel: Selection, time_col: str) -> tuple[list[sql.Composable], dict[str, Any]]:
    conds: list[sql.Composable] = [
        sql.SQL("{t} >= %(start)s AND {t} < %(end)s").format(t=sql.SQL(time_col))
    ]
    params: dict[str, Any] = {}
    if sel.device_ids is not None:
        conds.append(sql.SQL("r.device_id = ANY(%(ids)s)"))
        params["ids"] = list(sel.device_ids)
    if sel.service is not None:
        conds.append(sql.SQL("r.service = %(service)s"))
        params["service"] = sel.service
    if sel.district is not None:
        # The district's devices as an array first: `device_id = ANY(...)` reaches the
        # (device_id, time) indexes through the aggregate views, where a join could not.
        conds.append(
            sql.SQL(
                "r.device_id = ANY(ARRAY(SELECT device_id FROM devices"
                " WHERE district = %(district)s AND device_type = %(device_type)s))"
            )
        )
        params.update(district=sel.district, device_type=sel.device_type)
    return conds, params


def _any_present(metrics: Sequence[str]) -> sql.Composed:
    return sql.SQL("({})").format(
        sql.SQL(" OR ").join(sql.SQL("r.{} IS NOT NULL").format(sql.Identifier(m)) for m in metrics)
    )

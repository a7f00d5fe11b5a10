"""The one read path: every reader states what it may see as a `Scope` and reads through here.

History, replay, live aggregates, `silobreak query`, the benchmarks and (through the same SQL
function) Grafana's panels all read readings with these queries; none writes SQL of its own
for readings, and none filters in Python what it fetched. Pure: each function returns SQL
and parameters; `store/reader.py` and the streams' async callers run them.

Three shapes:
- raw pages of wide rows, keyed by (time, device_id), either direction, with a filter tree,
  offset, the last N per device, and commit-order (snapshot) bounds for live delivery;
- buckets per device from the best stored level (`silobreak_agg_level()`, migration 0050);
- pooled buckets per district, read from the ledger of released buckets (`pooled_buckets`):
  sum, average, count and devices only, whole buckets, a pool minimum on devices and readings,
  and a released bucket never changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from psycopg import sql

from store.aggregates import ORIGIN
from store.errors import StoreError
from store.schema import READINGS_TABLES, STORED_AVG, energy_metrics

Query = tuple[sql.Composed, dict[str, Any]]
Direction = Literal["asc", "desc"]
LevelName = Literal["auto", "raw", "1m", "1h"]
Op = Literal["eq", "ne", "lt", "le", "gt", "ge", "in"]

# Rows committed after snapshot `prev` (a live cursor), and rows a snapshot `upto` saw: `batch`
# is the writing transaction's id (store/writer.py), so these follow commit order.
COMMITTED_AFTER: Final = (
    "r.batch >= pg_snapshot_xmin(%(prev)s::pg_snapshot)::text::bigint"
    " AND NOT pg_visible_in_snapshot(r.batch::text::xid8, %(prev)s::pg_snapshot)"
)
COMMITTED_UPTO: Final = "pg_visible_in_snapshot(r.batch::text::xid8, %(upto)s::pg_snapshot)"
# How long after a bucket's end a reading may still arrive before the bucket is sealed: the
# streams' live grace period is the same number (`streams_aggregate_grace`).
DEFAULT_SEAL_GRACE: Final = timedelta(seconds=5)
_OPS: Final = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_FIELDS: Final = {"time": "r.time", "device_id": "r.device_id", "service": "r.service"}


@dataclass(frozen=True, slots=True)
class Cmp:
    """`field op value`: field is time, device_id, service, district or one of the metrics."""

    field: str
    op: Op
    value: Any


@dataclass(frozen=True, slots=True)
class And:
    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    part: Filter


Filter = Cmp | And | Or | Not


@dataclass(frozen=True, slots=True)
class Scope:
    """What one read may see of one device type, as plain data.

    `owners` None: every owner (the platform's own reads). `districts` and `bbox` select
    devices by where they stand; for pooled reads they select whole pools (a bounding box
    takes the districts whose devices all lie in it). `personal` False leaves personal-data
    devices out. `interval`: an aggregate grant's bucket width; every bucketed read of the
    scope is then in whole intervals. `min_pool`: the least devices and readings a pooled
    bucket of one metric needs to be shown.
    """

    device_type: str
    metrics: tuple[str, ...] = ()
    owners: tuple[str, ...] | None = None
    device_ids: tuple[str, ...] | None = None
    districts: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None
    personal: bool = True
    pooled: bool = False
    interval: timedelta | None = None
    min_pool: int = 1
    where: Filter | None = None

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
        if self.interval is not None and self.interval <= timedelta(0):
            raise StoreError("a scope's interval must be positive")

    @property
    def table(self) -> str:
        return READINGS_TABLES[self.device_type].name

    @property
    def chosen_metrics(self) -> tuple[str, ...]:
        """The selected metrics in catalog order (all of the type when none is named)."""
        names = READINGS_TABLES[self.device_type].metric_columns
        return names if not self.metrics else tuple(m for m in names if m in self.metrics)


@dataclass(frozen=True, slots=True)
class RawKey:
    """The last (time, device_id) of a page: the next page starts after it."""

    time: datetime
    device_id: str


@dataclass(frozen=True, slots=True)
class BucketKey:
    """The last (bucket, group, metric) of a page of buckets; group is a device or district."""

    bucket: datetime
    group: str
    metric: str


@dataclass(slots=True)
class _Params:
    values: dict[str, Any] = field(default_factory=dict)
    _names: Iterator[int] = field(default_factory=itertools.count)
    # Parameter names start with this: queries built apart can be joined into one statement.
    prefix: str = "p"

    def add(self, value: Any) -> sql.Composable:
        name = f"{self.prefix}{next(self._names)}"
        self.values[name] = value
        return sql.Placeholder(name)


def whole_buckets(start: datetime, end: datetime, step: timedelta) -> tuple[datetime, datetime]:
    """[start, end) narrowed to whole buckets of `step` (a partial bucket is never shown)."""
    if step <= timedelta(0):
        raise StoreError("step must be positive")
    first = ORIGIN - ((ORIGIN - start) // step) * step  # ceiling
    last = ORIGIN + ((end - ORIGIN) // step) * step  # floor
    return first, max(first, last)


def widen(start: datetime, end: datetime, step: timedelta) -> tuple[datetime, datetime]:
    """[start, end) widened to whole buckets of `step` (an operator's chart)."""
    if step <= timedelta(0):
        raise StoreError("step must be positive")
    first = ORIGIN + ((start - ORIGIN) // step) * step
    last = ORIGIN - ((ORIGIN - end) // step) * step
    return first, last


def raw(
    scope: Scope,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    after: RawKey | None = None,
    limit: int | None,
    direction: Direction = "asc",
    offset: int = 0,
    last_n: int | None = None,
    committed_after: str | None = None,
    committed_upto: str | None = None,
    total: bool = False,
    names: str = "p",
) -> Query:
    """Wide rows (time, device_id, service, district, metrics...) of `scope`, keyed by
    (time, device_id) in `direction`, after `after`.

    `last_n`: only each device's newest N rows in the range. `committed_after` and
    `committed_upto` (snapshots) keep the rows committed after / seen by them. `total`: each
    row ends with the count of all rows the page is taken from, in the same statement; an
    empty page is then one row of NULLs carrying that count. `names`: the parameters' prefix.
    """
    if scope.pooled:
        raise StoreError("a pooled scope has no raw readings")
    p = _Params(prefix=names)
    conds = _conds(scope, "r.time", start, end, p)
    if scope.where is not None:
        conds.append(_filter(scope.where, p, scope))
    if committed_after is not None:
        conds.append(sql.SQL(COMMITTED_AFTER))
        p.values["prev"] = committed_after
    if committed_upto is not None:
        conds.append(sql.SQL(COMMITTED_UPTO))
        p.values["upto"] = committed_upto
    metrics = scope.chosen_metrics
    conds.append(_any_present(metrics))
    order = sql.SQL("ASC" if direction == "asc" else "DESC")
    inner = sql.SQL(
        "SELECT r.time, r.device_id, r.service, d.district, {metrics}{rank}"
        " FROM {table} r LEFT JOIN devices d USING (device_id) WHERE {conds}"
    ).format(
        metrics=sql.SQL(", ").join(
            sql.SQL("r.{}::float8 AS {}").format(sql.Identifier(m), sql.Identifier(m))
            for m in metrics
        ),
        rank=sql.SQL(
            ", row_number() OVER (PARTITION BY r.device_id ORDER BY r.time DESC) AS n"
            if last_n is not None
            else ""
        ),
        table=sql.Identifier(scope.table),
        conds=sql.SQL(" AND ").join(conds),
    )
    outer: list[sql.Composable] = []
    if last_n is not None:
        outer.append(sql.SQL("x.n <= {}").format(p.add(last_n)))
    if after is not None:
        cmp = ">" if direction == "asc" else "<"
        outer.append(
            sql.SQL("(x.time, x.device_id) {} ({}, {})").format(
                sql.SQL(cmp), p.add(after.time), p.add(after.device_id)
            )
        )
    where = sql.SQL(" AND ").join(outer) if outer else sql.SQL("true")
    query = sql.SQL(
        "SELECT x.time, x.device_id, x.service, x.district, {metrics} FROM ({inner}) x"
        " WHERE {outer} ORDER BY x.time {order}, x.device_id {order}{limit}"
    ).format(
        metrics=sql.SQL(", ").join(sql.SQL("x.{}").format(sql.Identifier(m)) for m in metrics),
        inner=inner,
        outer=where,
        order=order,
        limit=_limit(p, limit, offset),
    )
    if total:
        query = sql.SQL(
            "SELECT q.*, c.total FROM (SELECT count(*) AS total FROM ({inner}) x WHERE {outer}) c"
            " LEFT JOIN ({page}) q ON true ORDER BY q.time {order}, q.device_id {order}"
        ).format(inner=inner, outer=where, page=query, order=order)
    return query, p.values


def readings(
    scopes: Sequence[Scope],
    *,
    limit: int,
    offset: int = 0,
    direction: Direction = "asc",
) -> Query:
    """One row per reading of one metric that any of `scopes` sees: time, device_id,
    device_type, metric, value, in (time, device_id, device_type, metric) order; a reading two
    scopes see is one row. Each scope's own filter applies to its rows."""
    params: dict[str, Any] = {}
    branches: list[sql.Composable] = []
    for index, scope in enumerate(scopes):
        if scope.pooled:
            continue
        # No scope gives more than limit + offset rows to the page: a wide row is >= 1 reading.
        query, values = raw(scope, limit=limit + offset, direction=direction, names=f"s{index}_")
        params.update(values)
        pairs = sql.SQL(", ").join(
            sql.SQL("({}, x.{})").format(sql.Literal(m), sql.Identifier(m))
            for m in scope.chosen_metrics
        )
        branches.append(
            sql.SQL(
                "SELECT x.time, x.device_id, {t}::text AS device_type, m.metric, m.value"
                " FROM ({q}) x CROSS JOIN LATERAL (VALUES {pairs}) AS m(metric, value)"
                " WHERE m.value IS NOT NULL"
            ).format(t=sql.Literal(scope.device_type), q=query, pairs=pairs)
        )
    if not branches:
        return sql.SQL(
            "SELECT NULL::timestamptz AS time, NULL::text AS device_id,"
            " NULL::text AS device_type, NULL::text AS metric, NULL::float8 AS value WHERE false"
        ).format(), {}
    p = _Params(values=params, prefix="page")
    order = sql.SQL("ASC" if direction == "asc" else "DESC")
    query = sql.SQL(
        "SELECT * FROM ({branches}) u"
        " ORDER BY u.time {o}, u.device_id {o}, u.device_type {o}, u.metric {o}{limit}"
    ).format(branches=sql.SQL(" UNION ").join(branches), o=order, limit=_limit(p, limit, offset))
    return query, p.values


def devices(
    scopes: Sequence[Scope],
    *,
    device_id: str | None = None,
    device_type: str | None = None,
    metric: str | None = None,
    per_metric: bool = False,
    located: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> Query:
    """The registry rows of the devices any of `scopes` may see, in id order: device_id,
    device_type, service, organisation, district, lat, lon, medium, metric, the index of the
    first scope that sees it, and the count of all such rows (before limit and offset).

    One row per device, or per device and metric of the scopes with `per_metric` (metric is
    NULL otherwise). A device is seen under a scope when it is of the scope's type, its
    current owner is one of the scope's owners and it stands where the scope allows (the
    registry conditions raw() applies to readings); `located`: only devices with a position.
    """
    p = _Params()
    branches: list[sql.Composable] = []
    for index, scope in enumerate(scopes):
        if scope.pooled or (device_type is not None and scope.device_type != device_type):
            continue
        if metric is not None and metric not in scope.chosen_metrics:
            continue
        conds = _device_conds(scope, p, alias="d")
        conds.append(sql.SQL("d.device_type = {}").format(p.add(scope.device_type)))
        if scope.owners is not None:
            conds.append(sql.SQL("d.service = ANY({})").format(p.add(list(scope.owners))))
        if device_id is not None:
            conds.append(sql.SQL("d.device_id = {}").format(p.add(device_id)))
        if located:
            conds.append(sql.SQL("d.lat IS NOT NULL AND d.lon IS NOT NULL"))
        chosen = [metric] if metric is not None else list(scope.chosen_metrics)
        names = (
            sql.SQL("unnest({}::text[])").format(p.add(chosen))
            if per_metric
            else sql.SQL("(VALUES (NULL::text))")
        )
        branches.append(
            sql.SQL(
                "SELECT d.device_id, d.device_type, d.service, s.organisation, d.district,"
                " d.lat, d.lon, d.medium, m.metric, {i} AS scope"
                " FROM devices d LEFT JOIN services s ON s.name = d.service"
                " CROSS JOIN {names} AS m(metric) WHERE {conds}"
            ).format(i=sql.Literal(index), names=names, conds=sql.SQL(" AND ").join(conds))
        )
    if not branches:
        return sql.SQL(
            "SELECT NULL::text AS device_id, NULL::text AS device_type, NULL::text AS service,"
            " NULL::text AS organisation, NULL::text AS district, NULL::float8 AS lat,"
            " NULL::float8 AS lon, NULL::text AS medium, NULL::text AS metric, 0 AS scope,"
            " 0::bigint AS total WHERE false"
        ).format(), {}
    query = sql.SQL(
        "SELECT device_id, device_type, service, organisation, district, lat, lon, medium,"
        " metric, min(scope) AS scope, count(*) OVER () AS total FROM ({branches}) b"
        " GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9 ORDER BY device_id, metric{limit}"
    ).format(
        branches=sql.SQL(" UNION ALL ").join(branches),
        limit=_limit(p, limit, offset),
    )
    return query, p.values


def buckets(
    scope: Scope,
    start: datetime,
    end: datetime,
    step: timedelta,
    *,
    level: LevelName = "auto",
    after: BucketKey | None = None,
    limit: int | None = None,
) -> Query:
    """Per-device buckets of `step` over [start, end): bucket, device_id, service, district,
    metric, avg, min, max, count, last — from the level `silobreak_agg_level()` picks.

    The caller passes a range of whole steps (whole_buckets() or widen()); a scope with an
    interval takes only steps that are whole multiples of it.
    """
    if scope.pooled:
        raise StoreError("a pooled scope reads pooled(), not per-device buckets")
    _check_step(scope, step)
    p = _Params()
    p.values.update(step=step, start=start, end=end, origin=ORIGIN)
    chooser: sql.Composable = (
        sql.SQL("silobreak_agg_level(%(step)s, %(start)s, %(end)s)")
        if level == "auto"
        else p.add(level)
    )
    metrics = scope.chosen_metrics
    branches = [_level_branch(scope, name, chooser, p) for name in ("1h", "1m")]
    branches.append(_raw_branch(scope, chooser, p))
    keyset: sql.Composable = sql.SQL("true")
    if after is not None:
        keyset = sql.SQL("(b, device_id, metric) > ({}, {}, {})").format(
            p.add(after.bucket), p.add(after.group), p.add(after.metric)
        )
    energy = energy_metrics(scope.device_type)
    values = sql.SQL(", ").join(
        sql.SQL("({}, {}, {})").format(
            sql.Literal(m),
            sql.SQL(", ").join(
                sql.SQL("s.{}").format(sql.Identifier(f"{m}_{s}"))
                for s in ("sum", "count", "min", "max", "last")
            ),
            sql.Literal(m in energy),
        )
        for m in metrics
    )
    query = sql.SQL(
        "SELECT * FROM ("
        " SELECT date_bin(%(step)s, s.t, %(origin)s) AS b, s.device_id, s.service,"
        "  d.district, m.metric, {avg} AS avg, min(m.lo) AS min,"
        "  max(m.hi) AS max, sum(m.c)::bigint AS count,"
        "  (array_agg(m.last ORDER BY s.t DESC) FILTER (WHERE m.last IS NOT NULL))[1] AS last"
        " FROM ({branches}) s LEFT JOIN devices d USING (device_id)"
        " CROSS JOIN LATERAL (VALUES {values}) AS m(metric, s, c, lo, hi, last, e)"
        " WHERE m.c > 0 GROUP BY 1, 2, 3, 4, 5) x"
        " WHERE {keyset} ORDER BY b, device_id, metric{limit}"
    ).format(
        branches=sql.SQL(" UNION ALL ").join(branches),
        values=values,
        avg=sql.SQL(STORED_AVG),
        keyset=keyset,
        limit=_limit(p, limit),
    )
    return query, p.values


def pooled(
    scope: Scope,
    start: datetime,
    end: datetime,
    *,
    after: BucketKey | None = None,
    limit: int | None = None,
) -> Query:
    """Released pooled buckets of the scope's interval in [start, end): bucket, service,
    district, metric, sum, avg, count, devices. Run release() for the range first."""
    if not scope.pooled or scope.interval is None:
        raise StoreError("pooled() needs a pooled scope with an interval")
    p = _Params()
    conds: list[sql.Composable] = [
        sql.SQL("p.device_type = {}").format(p.add(scope.device_type)),
        sql.SQL("p.width = {}").format(p.add(scope.interval)),
        sql.SQL("p.bucket >= {} AND p.bucket < {}").format(p.add(start), p.add(end)),
        sql.SQL("p.metric = ANY({})").format(p.add(list(scope.chosen_metrics))),
        sql.SQL("p.devices >= {n} AND p.count >= {n}").format(n=p.add(max(1, scope.min_pool))),
    ]
    if scope.owners is not None:
        conds.append(sql.SQL("p.service = ANY({})").format(p.add(list(scope.owners))))
    if scope.districts is not None:
        conds.append(sql.SQL("p.district = ANY({})").format(p.add(list(scope.districts))))
    if scope.bbox is not None:
        conds.append(_covered_districts(scope, p))
    if after is not None:
        conds.append(
            sql.SQL("(p.bucket, p.district, p.metric) > ({}, {}, {})").format(
                p.add(after.bucket), p.add(after.group), p.add(after.metric)
            )
        )
    query = sql.SQL(
        "SELECT p.bucket, p.service, p.district, p.metric, p.sum,"
        " CASE WHEN p.energy THEN 10 * log10(p.sum / p.count) ELSE p.sum / p.count END, p.count,"
        " p.devices FROM pooled_buckets p WHERE {conds}"
        " ORDER BY p.bucket, p.district, p.metric, p.service{limit}"
    ).format(
        conds=sql.SQL(" AND ").join(conds),
        limit=_limit(p, limit),
    )
    return query, p.values


def released_query(device_type: str, width: timedelta, start: datetime, end: datetime) -> Query:
    """The buckets of [start, end) already released for this type and width."""
    return (
        sql.SQL(
            "SELECT bucket FROM pooled_released WHERE device_type = %(t)s AND width = %(w)s"
            " AND bucket >= %(start)s AND bucket < %(end)s ORDER BY bucket"
        ).format(),
        {"t": device_type, "w": width, "start": start, "end": end},
    )


def release_statements(
    device_type: str, width: timedelta, start: datetime, end: datetime
) -> list[Query]:
    """Release every pooled bucket of [start, end) (whole, sealed buckets: the caller's
    checks) for every owner and district of the type, from the best stored level."""
    select, params = _pooled_select(device_type, width, start, end, level="auto")
    insert = sql.SQL(
        "INSERT INTO pooled_buckets"
        " (device_type, width, bucket, service, district, metric, sum, count, devices, energy)"
        " SELECT %(t)s, %(step)s, *, x.metric = ANY(%(energy)s) FROM ({select}) x"
        " ON CONFLICT DO NOTHING"
    ).format(select=select)
    mark = sql.SQL(
        "INSERT INTO pooled_released (device_type, width, bucket)"
        " SELECT %(t)s, %(step)s, b FROM generate_series(%(start)s::timestamptz,"
        " %(end)s::timestamptz - %(step)s::interval, %(step)s::interval) AS b"
        " ON CONFLICT DO NOTHING"
    ).format()
    return [(insert, params), (mark, dict(params))]


def pooled_compute(
    device_type: str,
    width: timedelta,
    start: datetime,
    end: datetime,
    *,
    level: LevelName,
    districts: Sequence[str] | None = None,
) -> Query:
    """What release() would store for [start, end), computed now from `level` and not kept:
    bucket, service, district, metric, sum, count, devices (benchmarks and checks); only
    the pools of `districts` when given."""
    select, params = _pooled_select(
        device_type, width, start, end, level=level, districts=districts
    )
    return sql.SQL("{} ORDER BY 1, 3, 4, 2").format(select), params


def _pooled_select(
    device_type: str,
    width: timedelta,
    start: datetime,
    end: datetime,
    *,
    level: LevelName,
    districts: Sequence[str] | None = None,
) -> Query:
    metrics = READINGS_TABLES[device_type].metric_columns
    scope = Scope(device_type)
    p = _Params()
    p.values.update(step=width, start=start, end=end, origin=ORIGIN, t=device_type)
    p.values["energy"] = sorted(energy_metrics(device_type))
    chooser: sql.Composable = (
        sql.SQL("silobreak_agg_level(%(step)s, %(start)s, %(end)s)")
        if level == "auto"
        else p.add(level)
    )
    extra = pool_filter = None
    if districts is not None:
        # Devices that ever stood in the pools first (an array: the indexes stay usable);
        # the join below then keeps the buckets each spent there.
        wanted = p.add([d or "" for d in districts])
        extra = sql.SQL(
            "r.device_id = ANY(ARRAY(SELECT device_id FROM device_districts"
            " WHERE coalesce(district, '') = ANY({})))"
        ).format(wanted)
        pool_filter = sql.SQL(" AND coalesce(h.district, '') = ANY({})").format(wanted)
    branches = [_level_branch(scope, name, chooser, p, extra) for name in ("1h", "1m")]
    branches.append(_raw_branch(scope, chooser, p, extra))
    values = sql.SQL(", ").join(
        sql.SQL("({}, s.{}, s.{})").format(
            sql.Literal(m), sql.Identifier(f"{m}_sum"), sql.Identifier(f"{m}_count")
        )
        for m in metrics
    )
    # A device counts in the pool of the district it stood in at the bucket's start: it is in
    # one pool per bucket, and every level gives the same pools.
    select = sql.SQL(
        "SELECT b, service, district, metric, sum(v) AS sum, sum(c)::bigint AS count,"
        "  count(DISTINCT device_id)::integer AS devices"
        " FROM (SELECT s.b, s.device_id, s.service, coalesce(h.district, '') AS district,"
        "   m.metric, m.v, m.c"
        "   FROM (SELECT date_bin(%(step)s, s.t, %(origin)s) AS b, s.* FROM ({branches}) s) s"
        "   JOIN device_districts h ON h.device_id = s.device_id AND h.valid @> s.b{pools}"
        "   CROSS JOIN LATERAL (VALUES {values}) AS m(metric, v, c) WHERE m.c > 0) x"
        " GROUP BY b, service, district, metric"
    ).format(
        branches=sql.SQL(" UNION ALL ").join(branches),
        values=values,
        pools=pool_filter or sql.SQL(""),
    )
    return select, p.values


def release_lock(device_type: str, width: timedelta) -> Query:
    """Serialises releases of one type and width (two gateways may release at once)."""
    return (
        sql.SQL("SELECT pg_advisory_xact_lock(hashtext('silobreak_pool:' || %(k)s))").format(),
        {"k": f"{device_type}:{width.total_seconds():.0f}"},
    )


def missing_spans(
    released: Sequence[datetime], start: datetime, end: datetime, width: timedelta
) -> list[tuple[datetime, datetime]]:
    """The runs of whole buckets in [start, end) that are not released yet."""
    done = set(released)
    spans: list[tuple[datetime, datetime]] = []
    at = start
    while at < end:
        if at in done:
            at += width
            continue
        first = at
        while at < end and at not in done:
            at += width
        spans.append((first, at))
    return spans


def sealed_end(end: datetime, width: timedelta, now: datetime, grace: timedelta) -> datetime:
    """`end`, cut to the last bucket that has been sealed by `now` (bucket end + grace)."""
    return min(end, ORIGIN + ((now - grace - ORIGIN) // width) * width)


def latest(scope: Scope) -> Query:
    """Per device and metric, the value with the latest reading time (not the latest arrival)."""
    if scope.pooled:
        raise StoreError("a pooled scope has no latest values")
    p = _Params()
    dev = _device_conds(scope, p, alias="d")
    dev.append(sql.SQL("d.device_type = {}").format(p.add(scope.device_type)))
    owner: sql.Composable = sql.SQL("")
    if scope.owners is not None:
        owner = sql.SQL(" AND r.service = ANY({})").format(p.add(list(scope.owners)))
    parts = [
        sql.SQL(
            "SELECT x.time, d.device_id, x.service, d.district, {name}, x.v FROM devices d"
            " CROSS JOIN LATERAL (SELECT r.time, r.service, r.{col}::float8 AS v FROM {table} r"
            " WHERE r.device_id = d.device_id AND r.{col} IS NOT NULL{owner}"
            " ORDER BY r.time DESC LIMIT 1) x WHERE {conds}"
        ).format(
            name=sql.Literal(m),
            col=sql.Identifier(m),
            table=sql.Identifier(scope.table),
            owner=owner,
            conds=sql.SQL(" AND ").join(dev),
        )
        for m in scope.chosen_metrics
    ]
    return sql.SQL("{} ORDER BY 2, 5").format(sql.SQL(" UNION ALL ").join(parts)), p.values


def _check_step(scope: Scope, step: timedelta) -> None:
    if step <= timedelta(0):
        raise StoreError("step must be positive")
    if scope.interval is not None and step % scope.interval:
        raise StoreError(f"buckets of this scope are whole {scope.interval}, not {step}")


def _level_branch(
    scope: Scope,
    name: str,
    chooser: sql.Composable,
    p: _Params,
    extra: sql.Composable | None = None,
) -> sql.Composable:
    stats = [
        sql.SQL("r.{}").format(sql.Identifier(f"{m}_{s}"))
        for m in scope.chosen_metrics
        for s in ("sum", "count", "min", "max", "last")
    ]
    conds: list[sql.Composable] = [sql.SQL("{} = {}").format(chooser, sql.Literal(name))]
    conds += _conds(scope, "r.bucket", None, None, p)
    conds.append(sql.SQL("r.bucket >= %(start)s AND r.bucket < %(end)s"))
    if extra is not None:
        conds.append(extra)
    return sql.SQL(
        "SELECT r.bucket AS t, r.device_id, r.service, {stats} FROM {view} r WHERE {conds}"
    ).format(
        stats=sql.SQL(", ").join(stats),
        view=sql.Identifier(f"agg_{name}_{scope.device_type}"),
        conds=sql.SQL(" AND ").join(conds),
    )


def _raw_branch(
    scope: Scope, chooser: sql.Composable, p: _Params, extra: sql.Composable | None = None
) -> sql.Composable:
    cols = []
    energy = energy_metrics(scope.device_type)
    for m in scope.chosen_metrics:
        v = sql.SQL("r.{}::float8").format(sql.Identifier(m))
        # A sound level's stored sum is of its energy, 10^(L/10), in the views as here.
        total = sql.SQL("power(10, {} / 10)").format(v) if m in energy else v
        cols.append(
            sql.SQL("{s}, ({v} IS NOT NULL)::int::bigint, {v}, {v}, {v}").format(s=total, v=v)
        )
    conds: list[sql.Composable] = [sql.SQL("{} = 'raw'").format(chooser)]
    conds += _conds(scope, "r.time", None, None, p)
    conds.append(sql.SQL("r.time >= %(start)s AND r.time < %(end)s"))
    if extra is not None:
        conds.append(extra)
    return sql.SQL(
        "SELECT r.time AS t, r.device_id, r.service, {cols} FROM {table} r WHERE {conds}"
    ).format(
        cols=sql.SQL(", ").join(cols),
        table=sql.Identifier(scope.table),
        conds=sql.SQL(" AND ").join(conds),
    )


def _conds(
    scope: Scope,
    time_col: str,
    start: datetime | None,
    end: datetime | None,
    p: _Params,
) -> list[sql.Composable]:
    """Conditions on `r` (a readings table or aggregate view) for the scope's rows."""
    conds: list[sql.Composable] = []
    t = sql.SQL(time_col)
    if start is not None:
        conds.append(sql.SQL("{} >= {}").format(t, p.add(start)))
    if end is not None:
        conds.append(sql.SQL("{} < {}").format(t, p.add(end)))
    if scope.owners is not None:
        conds.append(sql.SQL("r.service = ANY({})").format(p.add(list(scope.owners))))
    if scope.device_ids is not None:
        conds.append(sql.SQL("r.device_id = ANY({})").format(p.add(list(scope.device_ids))))
    dev = _device_conds(scope, p, alias="x")
    if dev:
        # The devices as an array first: `device_id = ANY(...)` reaches the (device_id, time)
        # indexes through the aggregate views, where a join could not.
        dev.append(sql.SQL("x.device_type = {}").format(p.add(scope.device_type)))
        conds.append(
            sql.SQL("r.device_id = ANY(ARRAY(SELECT x.device_id FROM devices x WHERE {}))").format(
                sql.SQL(" AND ").join(dev)
            )
        )
    return conds


def _device_conds(scope: Scope, p: _Params, *, alias: str) -> list[sql.Composable]:
    """Conditions on the registry row `alias` for where the device stands and what it holds."""
    a = sql.Identifier(alias)
    conds: list[sql.Composable] = []
    if scope.device_ids is not None:
        conds.append(sql.SQL("{}.device_id = ANY({})").format(a, p.add(list(scope.device_ids))))
    if scope.districts is not None:
        conds.append(sql.SQL("{}.district = ANY({})").format(a, p.add(list(scope.districts))))
    if scope.bbox is not None:
        x0, y0, x1, y1 = scope.bbox
        conds.append(
            sql.SQL("{a}.lon BETWEEN {} AND {} AND {a}.lat BETWEEN {} AND {}").format(
                p.add(x0), p.add(x1), p.add(y0), p.add(y1), a=a
            )
        )
    if not scope.personal:
        conds.append(sql.SQL("NOT {}.personal_data").format(a))
    return conds


def _covered_districts(scope: Scope, p: _Params) -> sql.Composable:
    """Pools a bounding box selects: districts all of whose devices (of the type and owners)
    lie in it. A box never cuts a pool."""
    assert scope.bbox is not None
    x0, y0, x1, y1 = scope.bbox
    owners: sql.Composable = sql.SQL("")
    if scope.owners is not None:
        owners = sql.SQL(" AND c.service = ANY({})").format(p.add(list(scope.owners)))
    return sql.SQL(
        "p.district IN (SELECT coalesce(c.district, '') FROM devices c"
        " WHERE c.device_type = {t}{owners} GROUP BY 1"
        " HAVING bool_and(c.lon BETWEEN {x0} AND {x1} AND c.lat BETWEEN {y0} AND {y1}))"
    ).format(
        t=p.add(scope.device_type),
        owners=owners,
        x0=p.add(x0),
        x1=p.add(x1),
        y0=p.add(y0),
        y1=p.add(y1),
    )


def _limit(p: _Params, limit: int | None, offset: int = 0) -> sql.Composable:
    """` LIMIT n OFFSET k` of a page (either left out when not asked for)."""
    parts: list[sql.Composable] = []
    if limit is not None:
        parts.append(sql.SQL(" LIMIT {}").format(p.add(limit)))
    if offset:
        parts.append(sql.SQL(" OFFSET {}").format(p.add(offset)))
    return sql.Composed(parts)


def _any_present(metrics: Sequence[str]) -> sql.Composable:
    return sql.SQL("({})").format(
        sql.SQL(" OR ").join(sql.SQL("r.{} IS NOT NULL").format(sql.Identifier(m)) for m in metrics)
    )


def _filter(f: Filter, p: _Params, scope: Scope) -> sql.Composable:
    if isinstance(f, And | Or):
        joiner = sql.SQL(" AND " if isinstance(f, And) else " OR ")
        return sql.SQL("({})").format(joiner.join(_filter(x, p, scope) for x in f.parts))
    if isinstance(f, Not):
        return sql.SQL("NOT ({})").format(_filter(f.part, p, scope))
    if f.field in _FIELDS:
        col: sql.Composable = sql.SQL(_FIELDS[f.field])
    elif f.field == "district":
        col = sql.SQL("d.district")
    elif f.field in scope.chosen_metrics:
        col = sql.SQL("r.{}::float8").format(sql.Identifier(f.field))
    else:
        raise StoreError(f"cannot filter {scope.device_type} readings on {f.field!r}")
    if f.op == "in":
        return sql.SQL("{} = ANY({})").format(col, p.add(list(f.value)))
    if f.op not in _OPS:
        raise StoreError(f"unknown comparison {f.op!r}")
    return sql.SQL("{} {} {}").format(col, sql.SQL(_OPS[f.op]), p.add(f.value))

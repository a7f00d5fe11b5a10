"""Generated SQL of the governed schema: per type, what a viewer may read (0031)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from devices.catalog import DeviceType
from store.ddl.names import STATS, energy, ident, quoted_list, stat_columns
from store.ddl.readings import narrow_view

# Each type's section header is padded to this width.
_HEADER_WIDTH: Final = 92


def types(types: Sequence[DeviceType], *, district_views: bool = True) -> str:
    """Per type: governed raw readings, 1-minute and 1-hour aggregates, and (as 0031 made
    them) the per-type district pools."""
    return "\n\n\n".join(_section(t, district_views) for t in types)


def drop_district_views(types: Sequence[DeviceType]) -> str:
    """The per-type district pool views dropped, for a store that pools from a ledger."""
    return "\n".join(f"DROP VIEW IF EXISTS governed.district_agg_1h_{t.name};" for t in types)


def readings(types: Sequence[DeviceType], *, replace: bool = False) -> str:
    """The narrow view of 0003, over what the viewer may see."""
    return narrow_view("readings", "governed.", types, replace)


def grant_viewers(types: Sequence[DeviceType], *, district_views: bool = True) -> str:
    """Existing viewer roles may read the new types' governed views too."""
    kinds = ("readings", "agg_1m", "agg_1h", *(("district_agg_1h",) if district_views else ()))
    views = [f"governed.{v}_{t.name}" for t in types for v in kinds]
    return (
        "DO $$\nDECLARE\n    viewer text;\nBEGIN\n"
        "    FOR viewer IN SELECT v.role FROM sql_viewers v\n"
        "                  JOIN pg_roles p ON p.rolname = v.role LOOP\n"
        f"        EXECUTE format('GRANT SELECT ON {', '.join(views)} TO %I', viewer);\n"
        "    END LOOP;\nEND $$;"
    )


def _section(t: DeviceType, district_views: bool) -> str:
    head = f"-- {t.name} "
    views = [_raw(t), _per_device(t, "1m", "60"), _per_device(t, "1h", "3600")]
    if district_views:
        views.append(_district(t))
    return head + "-" * (_HEADER_WIDTH - len(head)) + "\n" + "\n\n".join(views)


def _metrics_unnest(t: DeviceType) -> str:
    names = quoted_list(list(t.metric_names))
    return (
        "      FROM sql_viewer_access g\n"
        "      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0\n"
        f"          THEN ARRAY[{names}] ELSE g.metrics END) AS m\n"
    )


def _raw(t: DeviceType) -> str:
    n = t.name
    cols = ", ".join(f"r.{ident(m.name)}" for m in t.metrics)
    cases = ",\n".join(
        f"    CASE WHEN '{m.name}' = ANY (x.metrics) THEN r.{ident(m.name)} END AS {ident(m.name)}"
        for m in t.metrics
    )
    where = "\n   OR ".join(
        f"(r.{ident(m.name)} IS NOT NULL AND '{m.name}' = ANY (x.metrics))" for m in t.metrics
    )
    return (
        f"CREATE VIEW governed.readings_{n} WITH (security_barrier) AS\n"
        f"SELECT r.time, r.device_id, r.service, r.batch, {cols}\n"
        f"FROM readings_{n} r\n"
        "WHERE r.service = (SELECT principal FROM sql_viewer)\n"
        "UNION ALL\n"
        "SELECT r.time, r.device_id, r.service, r.batch,\n"
        f"{cases}\n"
        f"FROM readings_{n} r\n"
        "JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics\n"
        f"{_metrics_unnest(t)}"
        f"      WHERE g.device_type = '{n}' AND (g.granularity = 'raw')\n"
        "      GROUP BY g.device_id, g.owner) x\n"
        "  ON x.device_id = r.device_id AND x.owner = r.service\n"
        f"WHERE {where};"
    )


def _per_device(t: DeviceType, level: str, seconds: str) -> str:
    n = t.name
    cols = ", ".join(f"a.{c}" for c in stat_columns(t))
    cases = ",\n".join(
        f"    CASE WHEN '{m.name}' = ANY (x.metrics) THEN a.{m.name}_{s} END AS {m.name}_{s}"
        for m in t.metrics
        for s in STATS
    )
    where = "\n   OR ".join(
        f"(a.{m.name}_count > 0 AND '{m.name}' = ANY (x.metrics))" for m in t.metrics
    )
    return (
        f"CREATE VIEW governed.agg_{level}_{n} WITH (security_barrier) AS\n"
        f"SELECT a.bucket, a.device_id, a.service, {cols}\n"
        f"FROM agg_{level}_{n} a\n"
        "WHERE a.service = (SELECT principal FROM sql_viewer)\n"
        "UNION ALL\n"
        "SELECT a.bucket, a.device_id, a.service,\n"
        f"{cases}\n"
        f"FROM agg_{level}_{n} a\n"
        "JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics\n"
        f"{_metrics_unnest(t)}"
        f"      WHERE g.device_type = '{n}' AND (g.granularity = 'raw' OR"
        " (g.granularity = 'aggregate' AND g.pool = 'device'\n"
        f"          AND {seconds} % g.interval_s = 0))\n"
        "      GROUP BY g.device_id, g.owner) x\n"
        "  ON x.device_id = a.device_id AND x.owner = a.service\n"
        f"WHERE {where};"
    )


def _district_stats(t: DeviceType) -> str:
    lines = []
    for m in t.metrics:
        n, f = m.name, f"FILTER (WHERE '{m.name}' = ANY (x.metrics))"
        avg = f"sum(a.{n}_sum) {f} / nullif(sum(a.{n}_count) {f}, 0)"
        if energy(m):
            avg = f"10 * log10({avg})"
        lines += [
            f"{avg} AS {n}_avg",
            f"min(a.{n}_min) {f} AS {n}_min",
            f"max(a.{n}_max) {f} AS {n}_max",
            f"sum(a.{n}_count) {f}::bigint AS {n}_count",
            f"sum(a.{n}_sum) {f} AS {n}_sum",
        ]
    return "".join(f"    {line},\n" for line in lines)


def _district(t: DeviceType) -> str:
    n = t.name
    return (
        f"CREATE VIEW governed.district_agg_1h_{n} WITH (security_barrier) AS\n"
        "SELECT a.bucket, x.district, a.service,\n"
        f"{_district_stats(t)}"
        "    count(DISTINCT a.device_id) AS devices\n"
        f"FROM agg_1h_{n} a\n"
        "JOIN (SELECT g.device_id, g.owner, g.district, max(g.min_devices) AS min_devices,\n"
        "             array_agg(DISTINCT m) AS metrics\n"
        f"{_metrics_unnest(t)}"
        f"      WHERE g.device_type = '{n}' AND g.granularity = 'aggregate'"
        " AND g.pool = 'district'\n"
        "        AND 3600 % g.interval_s = 0\n"
        "      GROUP BY g.device_id, g.owner, g.district) x\n"
        "  ON x.device_id = a.device_id AND x.owner = a.service\n"
        "GROUP BY a.bucket, x.district, a.service\n"
        "HAVING count(DISTINCT a.device_id) >= greatest(max(x.min_devices), coalesce(\n"
        "    (SELECT value::integer FROM store_settings WHERE key = 'streams_min_pool'), 5));"
    )

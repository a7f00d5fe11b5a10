"""Generated SQL of the plain backend's aggregates: rollup tables, views, refresh functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from devices.catalog import DeviceType, MetricSpec
from store.ddl.names import STATS, energy, stat_columns

# TimescaleDB's bucket origin (a Monday): date_bin() with it gives time_bucket()'s buckets.
_ORIGIN: Final = "TIMESTAMPTZ '2000-01-03 00:00:00+00'"
_MINUTE: Final = f"date_bin(INTERVAL '1 minute', r.time, {_ORIGIN})"


def state_rows(types: Sequence[DeviceType]) -> str:
    """Each readings table's refresh state, starting from nothing refreshed."""
    return (
        "INSERT INTO rollup_state (relation, cursor, watermark) VALUES\n"
        + ",\n".join(f"    ('readings_{t.name}', '3:3:', '-infinity')" for t in types)
        + ";"
    )


def rollups(types: Sequence[DeviceType]) -> str:
    """Per type: the 1-minute and 1-hour rollup tables, their views, the refresh function."""
    return "\n\n".join(_rollups(t) for t in types)


def refresh_all(types: Sequence[DeviceType], *, replace: bool = False) -> str:
    verb = "CREATE OR REPLACE FUNCTION" if replace else "CREATE FUNCTION"
    calls = " + ".join(f"silobreak_refresh_rollups_{t.name}(settle)" for t in types)
    return (
        f"{verb} silobreak_refresh_rollups(settle interval) RETURNS bigint\n"
        f"LANGUAGE sql AS $$\n    SELECT {calls}\n$$;"
    )


def raw_stats(m: MetricSpec, last: str) -> list[str]:
    """A metric's statistics over raw rows `r` (1-minute buckets); `last` per backend."""
    v = f'r."{m.name}"::float8'
    if energy(m):
        # Sound levels: the sum is of sound energy (10^(L/10)), so coarser levels stay exact.
        avg, total = f"10 * log10(avg(power(10, {v} / 10)))", f"sum(power(10, {v} / 10))"
    else:
        avg, total = f"avg({v})", f"sum({v})"
    exprs = (avg, f"min({v})", f"max({v})", f"count({v})", total, last)
    return [f"{e} AS {m.name}_{s}" for e, s in zip(exprs, STATS, strict=True)]


def hour_stats(m: MetricSpec, last: str) -> list[str]:
    """A metric's statistics over 1-minute rows `a` (1-hour buckets)."""
    n = m.name
    avg = f"sum(a.{n}_sum) / nullif(sum(a.{n}_count), 0)"
    if energy(m):
        avg = f"10 * log10({avg})"
    exprs = (
        avg,
        f"min(a.{n}_min)",
        f"max(a.{n}_max)",
        f"sum(a.{n}_count)::bigint",
        f"sum(a.{n}_sum)",
        last,
    )
    return [f"{e} AS {n}_{s}" for e, s in zip(exprs, STATS, strict=True)]


def _raw_block(t: DeviceType) -> str:
    return ",\n".join(
        "    " + e
        for m in t.metrics
        for e in raw_stats(
            m,
            f'(array_agg(r."{m.name}"::float8 ORDER BY r.time DESC)'
            f' FILTER (WHERE r."{m.name}" IS NOT NULL))[1]',
        )
    )


def _hour_block(t: DeviceType) -> str:
    return ",\n".join(
        "    " + e
        for m in t.metrics
        for e in hour_stats(
            m,
            f"(array_agg(a.{m.name}_last ORDER BY a.bucket DESC)"
            f" FILTER (WHERE a.{m.name}_last IS NOT NULL))[1]",
        )
    )


def _rollups(t: DeviceType) -> str:
    name, cols = t.name, ", ".join(stat_columns(t))
    return (
        f"-- {name} {'-' * 80}\n"
        "-- Daily partitions like the raw table (retention drops them by day);"
        " hourly rows are 60x\n"
        "-- fewer, so a month per partition.\n"
        f"{_rollup_table(t, '1m')}\n\n{_rollup_table(t, '1h')}\n\n"
        f"{_minute_view(t, cols)}\n\n{_hour_view(t, cols)}\n\n{_refresh(t, cols)}"
    )


def _rollup_table(t: DeviceType, level: str) -> str:
    columns = "".join(
        f"    {m.name}_{s} {'bigint NOT NULL' if s == 'count' else 'double precision'},\n"
        for m in t.metrics
        for s in STATS
    )
    return (
        f"CREATE TABLE rollup_{level}_{t.name} (\n"
        "    bucket    timestamptz NOT NULL,\n"
        "    device_id text NOT NULL,\n"
        "    service   text NOT NULL,\n"
        f"{columns}"
        "    PRIMARY KEY (device_id, bucket, service)\n"
        ") PARTITION BY RANGE (bucket);"
    )


def _minute_view(t: DeviceType, cols: str) -> str:
    n = t.name
    return (
        f"CREATE VIEW agg_1m_{n} AS\n"
        f"SELECT bucket, device_id, service, {cols}\n"
        f"FROM rollup_1m_{n}\n"
        f"WHERE bucket < silobreak_rollup_watermark('readings_{n}')\n"
        "UNION ALL\n"
        f"SELECT {_MINUTE} AS bucket, r.device_id, r.service,\n"
        f"{_raw_block(t)}\n"
        f"FROM readings_{n} r\n"
        f"WHERE r.time >= silobreak_rollup_watermark('readings_{n}')\n"
        "GROUP BY 1, 2, 3;"
    )


def _hour_view(t: DeviceType, cols: str) -> str:
    n = t.name
    mark = f"date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_{n}'), {_ORIGIN})"
    return (
        f"CREATE VIEW agg_1h_{n} AS\n"
        f"SELECT bucket, device_id, service, {cols}\n"
        f"FROM rollup_1h_{n}\n"
        f"WHERE bucket < {mark}\n"
        "UNION ALL\n"
        f"SELECT date_bin(INTERVAL '1 hour', a.bucket, {_ORIGIN}) AS bucket,"
        " a.device_id, a.service,\n"
        f"{_hour_block(t)}\n"
        f"FROM agg_1m_{n} a\n"
        f"WHERE a.bucket >= {mark}\n"
        "GROUP BY 1, 2, 3;"
    )


def _refresh(t: DeviceType, cols: str) -> str:
    return _REFRESH.format(
        n=t.name,
        cols=cols,
        minute=_MINUTE,
        origin=_ORIGIN,
        raw=_raw_block(t),
        hour=_hour_block(t),
        next_hour="a.bucket < d.h + INTERVAL '1 hour'",
    )


_REFRESH: Final = """\
-- Recomputes the buckets of {n} touched by rows committed since the last refresh; returns
-- how many (device, time range) pieces it recomputed. Run in a REPEATABLE READ transaction
-- to do each piece once (READ COMMITTED is also correct, it may only redo some next time).
-- jit off: JIT compiling these small per-range statements costs ~150 ms a call, ~100x the
-- work itself (measured with 200 devices and 30 daily partitions).
CREATE FUNCTION silobreak_refresh_rollups_{n}(settle interval) RETURNS bigint
LANGUAGE plpgsql SET client_min_messages = warning SET jit = off AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    prev pg_snapshot;
    pieces bigint;
    day date;
    month timestamp;
BEGIN
    SELECT cursor INTO STRICT prev FROM rollup_state WHERE relation = 'readings_{n}' FOR UPDATE;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_{n}
        (device_id text, lo timestamptz, hi timestamptz) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_hours_{n}
        (device_id text, h timestamptz) ON COMMIT DELETE ROWS;
    -- Empty at the start of every transaction (ON COMMIT DELETE ROWS); cheaper than TRUNCATE.
    -- Touched minutes per device, merged into runs where less than 10 minutes separate
    -- them: one range read per run instead of one per minute (a backfill is one run).
    INSERT INTO silobreak_dirty_{n}
    WITH touched AS (
        SELECT DISTINCT r.device_id, {minute} AS b
        FROM readings_{n} r
        WHERE r.batch >= pg_snapshot_xmin(prev)::text::bigint
          AND NOT pg_visible_in_snapshot(r.batch::text::xid8, prev)
    ), starts AS (
        SELECT device_id, b, CASE WHEN b - lag(b) OVER w <= INTERVAL '10 minutes'
            THEN 0 ELSE 1 END AS start
        FROM touched WINDOW w AS (PARTITION BY device_id ORDER BY b)
    ), runs AS (
        SELECT device_id, b, sum(start) OVER (PARTITION BY device_id ORDER BY b) AS run
        FROM starts
    )
    SELECT device_id, min(b), max(b) + INTERVAL '1 minute' FROM runs GROUP BY device_id, run;
    GET DIAGNOSTICS pieces = ROW_COUNT;
    IF pieces > 0 THEN
        ANALYZE silobreak_dirty_{n};
        -- A day (a partition) at a time: a join on the whole partitioned table would scan
        -- every partition, where one bounded by a day reads only that day's.
        FOR day IN
            SELECT DISTINCT d::date FROM silobreak_dirty_{n},
                generate_series((lo AT TIME ZONE 'UTC')::date,
                                ((hi - INTERVAL '1 microsecond') AT TIME ZONE 'UTC')::date,
                                INTERVAL '1 day') AS d
        LOOP
            PERFORM silobreak_ensure_partitions('rollup_1m_{n}', day, day);
            PERFORM silobreak_ensure_month_partitions('rollup_1h_{n}', day, day);
            DELETE FROM rollup_1m_{n} x USING silobreak_dirty_{n} d
            WHERE x.device_id = d.device_id AND x.bucket >= d.lo AND x.bucket < d.hi
              AND x.bucket >= day::timestamp AT TIME ZONE 'UTC'
              AND x.bucket < (day + 1)::timestamp AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1m_{n} (bucket, device_id, service, {cols})
        SELECT a.* FROM silobreak_dirty_{n} d CROSS JOIN LATERAL (
            SELECT {minute} AS bucket, r.device_id, r.service,
            {raw}
            FROM readings_{n} r
            WHERE r.device_id = d.device_id AND r.time >= d.lo AND r.time < d.hi
            GROUP BY 1, 2, 3) a;
        INSERT INTO silobreak_dirty_hours_{n}
        SELECT DISTINCT d.device_id, h FROM silobreak_dirty_{n} d,
            generate_series(date_bin(INTERVAL '1 hour', d.lo, {origin}),
                            date_bin(INTERVAL '1 hour', d.hi - INTERVAL '1 microsecond', {origin}),
                            INTERVAL '1 hour') AS h;
        ANALYZE silobreak_dirty_hours_{n};
        FOR month IN
            SELECT DISTINCT date_trunc('month', h AT TIME ZONE 'UTC') FROM silobreak_dirty_hours_{n}
        LOOP
            DELETE FROM rollup_1h_{n} x USING silobreak_dirty_hours_{n} d
            WHERE x.device_id = d.device_id AND x.bucket = d.h
              AND x.bucket >= month AT TIME ZONE 'UTC'
              AND x.bucket < (month + INTERVAL '1 month') AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1h_{n} (bucket, device_id, service, {cols})
        SELECT d.h, a.* FROM silobreak_dirty_hours_{n} d CROSS JOIN LATERAL (
            SELECT a.device_id, a.service,
            {hour}
            FROM rollup_1m_{n} a
            WHERE a.device_id = d.device_id AND a.bucket >= d.h AND {next_hour}
            GROUP BY 1, 2) a;
    END IF;
    UPDATE rollup_state
    SET cursor = snap, updated_at = now(),
        watermark = greatest(watermark, date_bin(INTERVAL '1 minute', now() - settle, {origin}))
    WHERE relation = 'readings_{n}';
    RETURN pieces;
END $$;"""

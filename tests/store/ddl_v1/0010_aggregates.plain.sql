-- Aggregates for the plain-PostgreSQL backend: rollup tables maintained by the platform
-- (`silobreak maintain`, part of `silobreak up`), behind views with the names, columns and
-- answers of the TimescaleDB backend's continuous aggregates (0010_aggregates.timescale.sql).
--
-- rollup_1m_<type> holds 1-minute buckets computed from raw rows, rollup_1h_<type> 1-hour
-- buckets computed from those. silobreak_refresh_rollups() finds what changed through the
-- `batch` column (the writing transaction, indexed): rows committed since the last refresh
-- name the (device, minute) buckets to recompute, so the ingest path writes nothing extra.
-- agg_1m_<type> / agg_1h_<type> read the rollups below a watermark and aggregate raw rows
-- above it, as TimescaleDB's real-time aggregates do: a reading older than the watermark
-- shows once the next refresh has run (a late reading, as on TimescaleDB).
-- Generated from devices/catalog.py; a new metric needs a new migration.

-- One row per readings table: the last refresh's snapshot (rows committed before it are in
-- the rollups) and the watermark below which the views read the rollups.
CREATE TABLE rollup_state (
    relation   text PRIMARY KEY,
    cursor     pg_snapshot NOT NULL,
    watermark  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rollup_state (relation, cursor, watermark) VALUES
    ('readings_streetlight', '3:3:', '-infinity'),
    ('readings_traffic_light', '3:3:', '-infinity'),
    ('readings_air_sensor', '3:3:', '-infinity'),
    ('readings_meter', '3:3:', '-infinity');

CREATE FUNCTION silobreak_rollup_watermark(rel text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT watermark FROM rollup_state WHERE relation = rel), '-infinity')
$$;

-- Monthly partitions [first_day's month, last_day's month] of a table ranged on timestamptz.
CREATE FUNCTION silobreak_ensure_month_partitions(parent text, first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month date := date_trunc('month', first_day)::date;
    made integer := 0;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('silobreak_partitions:' || parent));
    WHILE month <= last_day LOOP
        part := parent || '_p' || to_char(month, 'YYYYMM');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, parent, month::timestamp AT TIME ZONE 'UTC',
                (month + INTERVAL '1 month')::timestamp AT TIME ZONE 'UTC');
            made := made + 1;
        END IF;
        month := (month + INTERVAL '1 month')::date;
    END LOOP;
    RETURN made;
END $$;


-- streetlight --------------------------------------------------------------------------------
-- Daily partitions like the raw table (retention drops them by day); hourly rows are 60x
-- fewer, so a month per partition.
CREATE TABLE rollup_1m_streetlight (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    lamp_on_avg double precision,
    lamp_on_min double precision,
    lamp_on_max double precision,
    lamp_on_count bigint NOT NULL,
    lamp_on_sum double precision,
    lamp_on_last double precision,
    dim_level_avg double precision,
    dim_level_min double precision,
    dim_level_max double precision,
    dim_level_count bigint NOT NULL,
    dim_level_sum double precision,
    dim_level_last double precision,
    power_w_avg double precision,
    power_w_min double precision,
    power_w_max double precision,
    power_w_count bigint NOT NULL,
    power_w_sum double precision,
    power_w_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE TABLE rollup_1h_streetlight (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    lamp_on_avg double precision,
    lamp_on_min double precision,
    lamp_on_max double precision,
    lamp_on_count bigint NOT NULL,
    lamp_on_sum double precision,
    lamp_on_last double precision,
    dim_level_avg double precision,
    dim_level_min double precision,
    dim_level_max double precision,
    dim_level_count bigint NOT NULL,
    dim_level_sum double precision,
    dim_level_last double precision,
    power_w_avg double precision,
    power_w_min double precision,
    power_w_max double precision,
    power_w_count bigint NOT NULL,
    power_w_sum double precision,
    power_w_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE VIEW agg_1m_streetlight AS
SELECT bucket, device_id, service, lamp_on_avg, lamp_on_min, lamp_on_max, lamp_on_count, lamp_on_sum, lamp_on_last, dim_level_avg, dim_level_min, dim_level_max, dim_level_count, dim_level_sum, dim_level_last, power_w_avg, power_w_min, power_w_max, power_w_count, power_w_sum, power_w_last
FROM rollup_1m_streetlight
WHERE bucket < silobreak_rollup_watermark('readings_streetlight')
UNION ALL
SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
    avg(r."lamp_on"::float8) AS lamp_on_avg,
    min(r."lamp_on"::float8) AS lamp_on_min,
    max(r."lamp_on"::float8) AS lamp_on_max,
    count(r."lamp_on"::float8) AS lamp_on_count,
    sum(r."lamp_on"::float8) AS lamp_on_sum,
    (array_agg(r."lamp_on"::float8 ORDER BY r.time DESC) FILTER (WHERE r."lamp_on" IS NOT NULL))[1] AS lamp_on_last,
    avg(r."dim_level"::float8) AS dim_level_avg,
    min(r."dim_level"::float8) AS dim_level_min,
    max(r."dim_level"::float8) AS dim_level_max,
    count(r."dim_level"::float8) AS dim_level_count,
    sum(r."dim_level"::float8) AS dim_level_sum,
    (array_agg(r."dim_level"::float8 ORDER BY r.time DESC) FILTER (WHERE r."dim_level" IS NOT NULL))[1] AS dim_level_last,
    avg(r."power_w"::float8) AS power_w_avg,
    min(r."power_w"::float8) AS power_w_min,
    max(r."power_w"::float8) AS power_w_max,
    count(r."power_w"::float8) AS power_w_count,
    sum(r."power_w"::float8) AS power_w_sum,
    (array_agg(r."power_w"::float8 ORDER BY r.time DESC) FILTER (WHERE r."power_w" IS NOT NULL))[1] AS power_w_last
FROM readings_streetlight r
WHERE r.time >= silobreak_rollup_watermark('readings_streetlight')
GROUP BY 1, 2, 3;

CREATE VIEW agg_1h_streetlight AS
SELECT bucket, device_id, service, lamp_on_avg, lamp_on_min, lamp_on_max, lamp_on_count, lamp_on_sum, lamp_on_last, dim_level_avg, dim_level_min, dim_level_max, dim_level_count, dim_level_sum, dim_level_last, power_w_avg, power_w_min, power_w_max, power_w_count, power_w_sum, power_w_last
FROM rollup_1h_streetlight
WHERE bucket < date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_streetlight'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
UNION ALL
SELECT date_bin(INTERVAL '1 hour', a.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, a.device_id, a.service,
    sum(a.lamp_on_sum) / nullif(sum(a.lamp_on_count), 0) AS lamp_on_avg,
    min(a.lamp_on_min) AS lamp_on_min,
    max(a.lamp_on_max) AS lamp_on_max,
    sum(a.lamp_on_count)::bigint AS lamp_on_count,
    sum(a.lamp_on_sum) AS lamp_on_sum,
    (array_agg(a.lamp_on_last ORDER BY a.bucket DESC) FILTER (WHERE a.lamp_on_last IS NOT NULL))[1] AS lamp_on_last,
    sum(a.dim_level_sum) / nullif(sum(a.dim_level_count), 0) AS dim_level_avg,
    min(a.dim_level_min) AS dim_level_min,
    max(a.dim_level_max) AS dim_level_max,
    sum(a.dim_level_count)::bigint AS dim_level_count,
    sum(a.dim_level_sum) AS dim_level_sum,
    (array_agg(a.dim_level_last ORDER BY a.bucket DESC) FILTER (WHERE a.dim_level_last IS NOT NULL))[1] AS dim_level_last,
    sum(a.power_w_sum) / nullif(sum(a.power_w_count), 0) AS power_w_avg,
    min(a.power_w_min) AS power_w_min,
    max(a.power_w_max) AS power_w_max,
    sum(a.power_w_count)::bigint AS power_w_count,
    sum(a.power_w_sum) AS power_w_sum,
    (array_agg(a.power_w_last ORDER BY a.bucket DESC) FILTER (WHERE a.power_w_last IS NOT NULL))[1] AS power_w_last
FROM agg_1m_streetlight a
WHERE a.bucket >= date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_streetlight'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
GROUP BY 1, 2, 3;

-- Recomputes the buckets of streetlight touched by rows committed since the last refresh; returns
-- how many (device, time range) pieces it recomputed. Run in a REPEATABLE READ transaction
-- to do each piece once (READ COMMITTED is also correct, it may only redo some next time).
-- jit off: JIT compiling these small per-range statements costs ~150 ms a call, ~100x the
-- work itself (measured with 200 devices and 30 daily partitions).
CREATE FUNCTION silobreak_refresh_rollups_streetlight(settle interval) RETURNS bigint
LANGUAGE plpgsql SET client_min_messages = warning SET jit = off AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    prev pg_snapshot;
    pieces bigint;
    day date;
    month timestamp;
BEGIN
    SELECT cursor INTO STRICT prev FROM rollup_state WHERE relation = 'readings_streetlight' FOR UPDATE;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_streetlight
        (device_id text, lo timestamptz, hi timestamptz) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_hours_streetlight
        (device_id text, h timestamptz) ON COMMIT DELETE ROWS;
    -- Empty at the start of every transaction (ON COMMIT DELETE ROWS); cheaper than TRUNCATE.
    -- Touched minutes per device, merged into runs where less than 10 minutes separate
    -- them: one range read per run instead of one per minute (a backfill is one run).
    INSERT INTO silobreak_dirty_streetlight
    WITH touched AS (
        SELECT DISTINCT r.device_id, date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS b
        FROM readings_streetlight r
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
        ANALYZE silobreak_dirty_streetlight;
        -- A day (a partition) at a time: a join on the whole partitioned table would scan
        -- every partition, where one bounded by a day reads only that day's.
        FOR day IN
            SELECT DISTINCT d::date FROM silobreak_dirty_streetlight,
                generate_series((lo AT TIME ZONE 'UTC')::date,
                                ((hi - INTERVAL '1 microsecond') AT TIME ZONE 'UTC')::date,
                                INTERVAL '1 day') AS d
        LOOP
            PERFORM silobreak_ensure_partitions('rollup_1m_streetlight', day, day);
            PERFORM silobreak_ensure_month_partitions('rollup_1h_streetlight', day, day);
            DELETE FROM rollup_1m_streetlight x USING silobreak_dirty_streetlight d
            WHERE x.device_id = d.device_id AND x.bucket >= d.lo AND x.bucket < d.hi
              AND x.bucket >= day::timestamp AT TIME ZONE 'UTC'
              AND x.bucket < (day + 1)::timestamp AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1m_streetlight (bucket, device_id, service, lamp_on_avg, lamp_on_min, lamp_on_max, lamp_on_count, lamp_on_sum, lamp_on_last, dim_level_avg, dim_level_min, dim_level_max, dim_level_count, dim_level_sum, dim_level_last, power_w_avg, power_w_min, power_w_max, power_w_count, power_w_sum, power_w_last)
        SELECT a.* FROM silobreak_dirty_streetlight d CROSS JOIN LATERAL (
            SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
                avg(r."lamp_on"::float8) AS lamp_on_avg,
    min(r."lamp_on"::float8) AS lamp_on_min,
    max(r."lamp_on"::float8) AS lamp_on_max,
    count(r."lamp_on"::float8) AS lamp_on_count,
    sum(r."lamp_on"::float8) AS lamp_on_sum,
    (array_agg(r."lamp_on"::float8 ORDER BY r.time DESC) FILTER (WHERE r."lamp_on" IS NOT NULL))[1] AS lamp_on_last,
    avg(r."dim_level"::float8) AS dim_level_avg,
    min(r."dim_level"::float8) AS dim_level_min,
    max(r."dim_level"::float8) AS dim_level_max,
    count(r."dim_level"::float8) AS dim_level_count,
    sum(r."dim_level"::float8) AS dim_level_sum,
    (array_agg(r."dim_level"::float8 ORDER BY r.time DESC) FILTER (WHERE r."dim_level" IS NOT NULL))[1] AS dim_level_last,
    avg(r."power_w"::float8) AS power_w_avg,
    min(r."power_w"::float8) AS power_w_min,
    max(r."power_w"::float8) AS power_w_max,
    count(r."power_w"::float8) AS power_w_count,
    sum(r."power_w"::float8) AS power_w_sum,
    (array_agg(r."power_w"::float8 ORDER BY r.time DESC) FILTER (WHERE r."power_w" IS NOT NULL))[1] AS power_w_last
            FROM readings_streetlight r
            WHERE r.device_id = d.device_id AND r.time >= d.lo AND r.time < d.hi
            GROUP BY 1, 2, 3) a;
        INSERT INTO silobreak_dirty_hours_streetlight
        SELECT DISTINCT d.device_id, h FROM silobreak_dirty_streetlight d,
            generate_series(date_bin(INTERVAL '1 hour', d.lo, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            date_bin(INTERVAL '1 hour', d.hi - INTERVAL '1 microsecond', TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            INTERVAL '1 hour') AS h;
        ANALYZE silobreak_dirty_hours_streetlight;
        FOR month IN
            SELECT DISTINCT date_trunc('month', h AT TIME ZONE 'UTC') FROM silobreak_dirty_hours_streetlight
        LOOP
            DELETE FROM rollup_1h_streetlight x USING silobreak_dirty_hours_streetlight d
            WHERE x.device_id = d.device_id AND x.bucket = d.h
              AND x.bucket >= month AT TIME ZONE 'UTC'
              AND x.bucket < (month + INTERVAL '1 month') AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1h_streetlight (bucket, device_id, service, lamp_on_avg, lamp_on_min, lamp_on_max, lamp_on_count, lamp_on_sum, lamp_on_last, dim_level_avg, dim_level_min, dim_level_max, dim_level_count, dim_level_sum, dim_level_last, power_w_avg, power_w_min, power_w_max, power_w_count, power_w_sum, power_w_last)
        SELECT d.h, a.* FROM silobreak_dirty_hours_streetlight d CROSS JOIN LATERAL (
            SELECT a.device_id, a.service,
                sum(a.lamp_on_sum) / nullif(sum(a.lamp_on_count), 0) AS lamp_on_avg,
    min(a.lamp_on_min) AS lamp_on_min,
    max(a.lamp_on_max) AS lamp_on_max,
    sum(a.lamp_on_count)::bigint AS lamp_on_count,
    sum(a.lamp_on_sum) AS lamp_on_sum,
    (array_agg(a.lamp_on_last ORDER BY a.bucket DESC) FILTER (WHERE a.lamp_on_last IS NOT NULL))[1] AS lamp_on_last,
    sum(a.dim_level_sum) / nullif(sum(a.dim_level_count), 0) AS dim_level_avg,
    min(a.dim_level_min) AS dim_level_min,
    max(a.dim_level_max) AS dim_level_max,
    sum(a.dim_level_count)::bigint AS dim_level_count,
    sum(a.dim_level_sum) AS dim_level_sum,
    (array_agg(a.dim_level_last ORDER BY a.bucket DESC) FILTER (WHERE a.dim_level_last IS NOT NULL))[1] AS dim_level_last,
    sum(a.power_w_sum) / nullif(sum(a.power_w_count), 0) AS power_w_avg,
    min(a.power_w_min) AS power_w_min,
    max(a.power_w_max) AS power_w_max,
    sum(a.power_w_count)::bigint AS power_w_count,
    sum(a.power_w_sum) AS power_w_sum,
    (array_agg(a.power_w_last ORDER BY a.bucket DESC) FILTER (WHERE a.power_w_last IS NOT NULL))[1] AS power_w_last
            FROM rollup_1m_streetlight a
            WHERE a.device_id = d.device_id AND a.bucket >= d.h AND a.bucket < d.h + INTERVAL '1 hour'
            GROUP BY 1, 2) a;
    END IF;
    UPDATE rollup_state
    SET cursor = snap, updated_at = now(),
        watermark = greatest(watermark, date_bin(INTERVAL '1 minute', now() - settle, TIMESTAMPTZ '2000-01-03 00:00:00+00'))
    WHERE relation = 'readings_streetlight';
    RETURN pieces;
END $$;

-- traffic_light --------------------------------------------------------------------------------
-- Daily partitions like the raw table (retention drops them by day); hourly rows are 60x
-- fewer, so a month per partition.
CREATE TABLE rollup_1m_traffic_light (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    phase_avg double precision,
    phase_min double precision,
    phase_max double precision,
    phase_count bigint NOT NULL,
    phase_sum double precision,
    phase_last double precision,
    vehicle_count_avg double precision,
    vehicle_count_min double precision,
    vehicle_count_max double precision,
    vehicle_count_count bigint NOT NULL,
    vehicle_count_sum double precision,
    vehicle_count_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE TABLE rollup_1h_traffic_light (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    phase_avg double precision,
    phase_min double precision,
    phase_max double precision,
    phase_count bigint NOT NULL,
    phase_sum double precision,
    phase_last double precision,
    vehicle_count_avg double precision,
    vehicle_count_min double precision,
    vehicle_count_max double precision,
    vehicle_count_count bigint NOT NULL,
    vehicle_count_sum double precision,
    vehicle_count_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE VIEW agg_1m_traffic_light AS
SELECT bucket, device_id, service, phase_avg, phase_min, phase_max, phase_count, phase_sum, phase_last, vehicle_count_avg, vehicle_count_min, vehicle_count_max, vehicle_count_count, vehicle_count_sum, vehicle_count_last
FROM rollup_1m_traffic_light
WHERE bucket < silobreak_rollup_watermark('readings_traffic_light')
UNION ALL
SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
    avg(r."phase"::float8) AS phase_avg,
    min(r."phase"::float8) AS phase_min,
    max(r."phase"::float8) AS phase_max,
    count(r."phase"::float8) AS phase_count,
    sum(r."phase"::float8) AS phase_sum,
    (array_agg(r."phase"::float8 ORDER BY r.time DESC) FILTER (WHERE r."phase" IS NOT NULL))[1] AS phase_last,
    avg(r."vehicle_count"::float8) AS vehicle_count_avg,
    min(r."vehicle_count"::float8) AS vehicle_count_min,
    max(r."vehicle_count"::float8) AS vehicle_count_max,
    count(r."vehicle_count"::float8) AS vehicle_count_count,
    sum(r."vehicle_count"::float8) AS vehicle_count_sum,
    (array_agg(r."vehicle_count"::float8 ORDER BY r.time DESC) FILTER (WHERE r."vehicle_count" IS NOT NULL))[1] AS vehicle_count_last
FROM readings_traffic_light r
WHERE r.time >= silobreak_rollup_watermark('readings_traffic_light')
GROUP BY 1, 2, 3;

CREATE VIEW agg_1h_traffic_light AS
SELECT bucket, device_id, service, phase_avg, phase_min, phase_max, phase_count, phase_sum, phase_last, vehicle_count_avg, vehicle_count_min, vehicle_count_max, vehicle_count_count, vehicle_count_sum, vehicle_count_last
FROM rollup_1h_traffic_light
WHERE bucket < date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_traffic_light'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
UNION ALL
SELECT date_bin(INTERVAL '1 hour', a.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, a.device_id, a.service,
    sum(a.phase_sum) / nullif(sum(a.phase_count), 0) AS phase_avg,
    min(a.phase_min) AS phase_min,
    max(a.phase_max) AS phase_max,
    sum(a.phase_count)::bigint AS phase_count,
    sum(a.phase_sum) AS phase_sum,
    (array_agg(a.phase_last ORDER BY a.bucket DESC) FILTER (WHERE a.phase_last IS NOT NULL))[1] AS phase_last,
    sum(a.vehicle_count_sum) / nullif(sum(a.vehicle_count_count), 0) AS vehicle_count_avg,
    min(a.vehicle_count_min) AS vehicle_count_min,
    max(a.vehicle_count_max) AS vehicle_count_max,
    sum(a.vehicle_count_count)::bigint AS vehicle_count_count,
    sum(a.vehicle_count_sum) AS vehicle_count_sum,
    (array_agg(a.vehicle_count_last ORDER BY a.bucket DESC) FILTER (WHERE a.vehicle_count_last IS NOT NULL))[1] AS vehicle_count_last
FROM agg_1m_traffic_light a
WHERE a.bucket >= date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_traffic_light'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
GROUP BY 1, 2, 3;

-- Recomputes the buckets of traffic_light touched by rows committed since the last refresh; returns
-- how many (device, time range) pieces it recomputed. Run in a REPEATABLE READ transaction
-- to do each piece once (READ COMMITTED is also correct, it may only redo some next time).
-- jit off: JIT compiling these small per-range statements costs ~150 ms a call, ~100x the
-- work itself (measured with 200 devices and 30 daily partitions).
CREATE FUNCTION silobreak_refresh_rollups_traffic_light(settle interval) RETURNS bigint
LANGUAGE plpgsql SET client_min_messages = warning SET jit = off AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    prev pg_snapshot;
    pieces bigint;
    day date;
    month timestamp;
BEGIN
    SELECT cursor INTO STRICT prev FROM rollup_state WHERE relation = 'readings_traffic_light' FOR UPDATE;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_traffic_light
        (device_id text, lo timestamptz, hi timestamptz) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_hours_traffic_light
        (device_id text, h timestamptz) ON COMMIT DELETE ROWS;
    -- Empty at the start of every transaction (ON COMMIT DELETE ROWS); cheaper than TRUNCATE.
    -- Touched minutes per device, merged into runs where less than 10 minutes separate
    -- them: one range read per run instead of one per minute (a backfill is one run).
    INSERT INTO silobreak_dirty_traffic_light
    WITH touched AS (
        SELECT DISTINCT r.device_id, date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS b
        FROM readings_traffic_light r
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
        ANALYZE silobreak_dirty_traffic_light;
        -- A day (a partition) at a time: a join on the whole partitioned table would scan
        -- every partition, where one bounded by a day reads only that day's.
        FOR day IN
            SELECT DISTINCT d::date FROM silobreak_dirty_traffic_light,
                generate_series((lo AT TIME ZONE 'UTC')::date,
                                ((hi - INTERVAL '1 microsecond') AT TIME ZONE 'UTC')::date,
                                INTERVAL '1 day') AS d
        LOOP
            PERFORM silobreak_ensure_partitions('rollup_1m_traffic_light', day, day);
            PERFORM silobreak_ensure_month_partitions('rollup_1h_traffic_light', day, day);
            DELETE FROM rollup_1m_traffic_light x USING silobreak_dirty_traffic_light d
            WHERE x.device_id = d.device_id AND x.bucket >= d.lo AND x.bucket < d.hi
              AND x.bucket >= day::timestamp AT TIME ZONE 'UTC'
              AND x.bucket < (day + 1)::timestamp AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1m_traffic_light (bucket, device_id, service, phase_avg, phase_min, phase_max, phase_count, phase_sum, phase_last, vehicle_count_avg, vehicle_count_min, vehicle_count_max, vehicle_count_count, vehicle_count_sum, vehicle_count_last)
        SELECT a.* FROM silobreak_dirty_traffic_light d CROSS JOIN LATERAL (
            SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
                avg(r."phase"::float8) AS phase_avg,
    min(r."phase"::float8) AS phase_min,
    max(r."phase"::float8) AS phase_max,
    count(r."phase"::float8) AS phase_count,
    sum(r."phase"::float8) AS phase_sum,
    (array_agg(r."phase"::float8 ORDER BY r.time DESC) FILTER (WHERE r."phase" IS NOT NULL))[1] AS phase_last,
    avg(r."vehicle_count"::float8) AS vehicle_count_avg,
    min(r."vehicle_count"::float8) AS vehicle_count_min,
    max(r."vehicle_count"::float8) AS vehicle_count_max,
    count(r."vehicle_count"::float8) AS vehicle_count_count,
    sum(r."vehicle_count"::float8) AS vehicle_count_sum,
    (array_agg(r."vehicle_count"::float8 ORDER BY r.time DESC) FILTER (WHERE r."vehicle_count" IS NOT NULL))[1] AS vehicle_count_last
            FROM readings_traffic_light r
            WHERE r.device_id = d.device_id AND r.time >= d.lo AND r.time < d.hi
            GROUP BY 1, 2, 3) a;
        INSERT INTO silobreak_dirty_hours_traffic_light
        SELECT DISTINCT d.device_id, h FROM silobreak_dirty_traffic_light d,
            generate_series(date_bin(INTERVAL '1 hour', d.lo, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            date_bin(INTERVAL '1 hour', d.hi - INTERVAL '1 microsecond', TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            INTERVAL '1 hour') AS h;
        ANALYZE silobreak_dirty_hours_traffic_light;
        FOR month IN
            SELECT DISTINCT date_trunc('month', h AT TIME ZONE 'UTC') FROM silobreak_dirty_hours_traffic_light
        LOOP
            DELETE FROM rollup_1h_traffic_light x USING silobreak_dirty_hours_traffic_light d
            WHERE x.device_id = d.device_id AND x.bucket = d.h
              AND x.bucket >= month AT TIME ZONE 'UTC'
              AND x.bucket < (month + INTERVAL '1 month') AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1h_traffic_light (bucket, device_id, service, phase_avg, phase_min, phase_max, phase_count, phase_sum, phase_last, vehicle_count_avg, vehicle_count_min, vehicle_count_max, vehicle_count_count, vehicle_count_sum, vehicle_count_last)
        SELECT d.h, a.* FROM silobreak_dirty_hours_traffic_light d CROSS JOIN LATERAL (
            SELECT a.device_id, a.service,
                sum(a.phase_sum) / nullif(sum(a.phase_count), 0) AS phase_avg,
    min(a.phase_min) AS phase_min,
    max(a.phase_max) AS phase_max,
    sum(a.phase_count)::bigint AS phase_count,
    sum(a.phase_sum) AS phase_sum,
    (array_agg(a.phase_last ORDER BY a.bucket DESC) FILTER (WHERE a.phase_last IS NOT NULL))[1] AS phase_last,
    sum(a.vehicle_count_sum) / nullif(sum(a.vehicle_count_count), 0) AS vehicle_count_avg,
    min(a.vehicle_count_min) AS vehicle_count_min,
    max(a.vehicle_count_max) AS vehicle_count_max,
    sum(a.vehicle_count_count)::bigint AS vehicle_count_count,
    sum(a.vehicle_count_sum) AS vehicle_count_sum,
    (array_agg(a.vehicle_count_last ORDER BY a.bucket DESC) FILTER (WHERE a.vehicle_count_last IS NOT NULL))[1] AS vehicle_count_last
            FROM rollup_1m_traffic_light a
            WHERE a.device_id = d.device_id AND a.bucket >= d.h AND a.bucket < d.h + INTERVAL '1 hour'
            GROUP BY 1, 2) a;
    END IF;
    UPDATE rollup_state
    SET cursor = snap, updated_at = now(),
        watermark = greatest(watermark, date_bin(INTERVAL '1 minute', now() - settle, TIMESTAMPTZ '2000-01-03 00:00:00+00'))
    WHERE relation = 'readings_traffic_light';
    RETURN pieces;
END $$;

-- air_sensor --------------------------------------------------------------------------------
-- Daily partitions like the raw table (retention drops them by day); hourly rows are 60x
-- fewer, so a month per partition.
CREATE TABLE rollup_1m_air_sensor (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    pm25_avg double precision,
    pm25_min double precision,
    pm25_max double precision,
    pm25_count bigint NOT NULL,
    pm25_sum double precision,
    pm25_last double precision,
    pm10_avg double precision,
    pm10_min double precision,
    pm10_max double precision,
    pm10_count bigint NOT NULL,
    pm10_sum double precision,
    pm10_last double precision,
    no2_avg double precision,
    no2_min double precision,
    no2_max double precision,
    no2_count bigint NOT NULL,
    no2_sum double precision,
    no2_last double precision,
    o3_avg double precision,
    o3_min double precision,
    o3_max double precision,
    o3_count bigint NOT NULL,
    o3_sum double precision,
    o3_last double precision,
    temperature_c_avg double precision,
    temperature_c_min double precision,
    temperature_c_max double precision,
    temperature_c_count bigint NOT NULL,
    temperature_c_sum double precision,
    temperature_c_last double precision,
    humidity_pct_avg double precision,
    humidity_pct_min double precision,
    humidity_pct_max double precision,
    humidity_pct_count bigint NOT NULL,
    humidity_pct_sum double precision,
    humidity_pct_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE TABLE rollup_1h_air_sensor (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    pm25_avg double precision,
    pm25_min double precision,
    pm25_max double precision,
    pm25_count bigint NOT NULL,
    pm25_sum double precision,
    pm25_last double precision,
    pm10_avg double precision,
    pm10_min double precision,
    pm10_max double precision,
    pm10_count bigint NOT NULL,
    pm10_sum double precision,
    pm10_last double precision,
    no2_avg double precision,
    no2_min double precision,
    no2_max double precision,
    no2_count bigint NOT NULL,
    no2_sum double precision,
    no2_last double precision,
    o3_avg double precision,
    o3_min double precision,
    o3_max double precision,
    o3_count bigint NOT NULL,
    o3_sum double precision,
    o3_last double precision,
    temperature_c_avg double precision,
    temperature_c_min double precision,
    temperature_c_max double precision,
    temperature_c_count bigint NOT NULL,
    temperature_c_sum double precision,
    temperature_c_last double precision,
    humidity_pct_avg double precision,
    humidity_pct_min double precision,
    humidity_pct_max double precision,
    humidity_pct_count bigint NOT NULL,
    humidity_pct_sum double precision,
    humidity_pct_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE VIEW agg_1m_air_sensor AS
SELECT bucket, device_id, service, pm25_avg, pm25_min, pm25_max, pm25_count, pm25_sum, pm25_last, pm10_avg, pm10_min, pm10_max, pm10_count, pm10_sum, pm10_last, no2_avg, no2_min, no2_max, no2_count, no2_sum, no2_last, o3_avg, o3_min, o3_max, o3_count, o3_sum, o3_last, temperature_c_avg, temperature_c_min, temperature_c_max, temperature_c_count, temperature_c_sum, temperature_c_last, humidity_pct_avg, humidity_pct_min, humidity_pct_max, humidity_pct_count, humidity_pct_sum, humidity_pct_last
FROM rollup_1m_air_sensor
WHERE bucket < silobreak_rollup_watermark('readings_air_sensor')
UNION ALL
SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
    avg(r."pm25"::float8) AS pm25_avg,
    min(r."pm25"::float8) AS pm25_min,
    max(r."pm25"::float8) AS pm25_max,
    count(r."pm25"::float8) AS pm25_count,
    sum(r."pm25"::float8) AS pm25_sum,
    (array_agg(r."pm25"::float8 ORDER BY r.time DESC) FILTER (WHERE r."pm25" IS NOT NULL))[1] AS pm25_last,
    avg(r."pm10"::float8) AS pm10_avg,
    min(r."pm10"::float8) AS pm10_min,
    max(r."pm10"::float8) AS pm10_max,
    count(r."pm10"::float8) AS pm10_count,
    sum(r."pm10"::float8) AS pm10_sum,
    (array_agg(r."pm10"::float8 ORDER BY r.time DESC) FILTER (WHERE r."pm10" IS NOT NULL))[1] AS pm10_last,
    avg(r."no2"::float8) AS no2_avg,
    min(r."no2"::float8) AS no2_min,
    max(r."no2"::float8) AS no2_max,
    count(r."no2"::float8) AS no2_count,
    sum(r."no2"::float8) AS no2_sum,
    (array_agg(r."no2"::float8 ORDER BY r.time DESC) FILTER (WHERE r."no2" IS NOT NULL))[1] AS no2_last,
    avg(r."o3"::float8) AS o3_avg,
    min(r."o3"::float8) AS o3_min,
    max(r."o3"::float8) AS o3_max,
    count(r."o3"::float8) AS o3_count,
    sum(r."o3"::float8) AS o3_sum,
    (array_agg(r."o3"::float8 ORDER BY r.time DESC) FILTER (WHERE r."o3" IS NOT NULL))[1] AS o3_last,
    avg(r."temperature_c"::float8) AS temperature_c_avg,
    min(r."temperature_c"::float8) AS temperature_c_min,
    max(r."temperature_c"::float8) AS temperature_c_max,
    count(r."temperature_c"::float8) AS temperature_c_count,
    sum(r."temperature_c"::float8) AS temperature_c_sum,
    (array_agg(r."temperature_c"::float8 ORDER BY r.time DESC) FILTER (WHERE r."temperature_c" IS NOT NULL))[1] AS temperature_c_last,
    avg(r."humidity_pct"::float8) AS humidity_pct_avg,
    min(r."humidity_pct"::float8) AS humidity_pct_min,
    max(r."humidity_pct"::float8) AS humidity_pct_max,
    count(r."humidity_pct"::float8) AS humidity_pct_count,
    sum(r."humidity_pct"::float8) AS humidity_pct_sum,
    (array_agg(r."humidity_pct"::float8 ORDER BY r.time DESC) FILTER (WHERE r."humidity_pct" IS NOT NULL))[1] AS humidity_pct_last
FROM readings_air_sensor r
WHERE r.time >= silobreak_rollup_watermark('readings_air_sensor')
GROUP BY 1, 2, 3;

CREATE VIEW agg_1h_air_sensor AS
SELECT bucket, device_id, service, pm25_avg, pm25_min, pm25_max, pm25_count, pm25_sum, pm25_last, pm10_avg, pm10_min, pm10_max, pm10_count, pm10_sum, pm10_last, no2_avg, no2_min, no2_max, no2_count, no2_sum, no2_last, o3_avg, o3_min, o3_max, o3_count, o3_sum, o3_last, temperature_c_avg, temperature_c_min, temperature_c_max, temperature_c_count, temperature_c_sum, temperature_c_last, humidity_pct_avg, humidity_pct_min, humidity_pct_max, humidity_pct_count, humidity_pct_sum, humidity_pct_last
FROM rollup_1h_air_sensor
WHERE bucket < date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_air_sensor'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
UNION ALL
SELECT date_bin(INTERVAL '1 hour', a.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, a.device_id, a.service,
    sum(a.pm25_sum) / nullif(sum(a.pm25_count), 0) AS pm25_avg,
    min(a.pm25_min) AS pm25_min,
    max(a.pm25_max) AS pm25_max,
    sum(a.pm25_count)::bigint AS pm25_count,
    sum(a.pm25_sum) AS pm25_sum,
    (array_agg(a.pm25_last ORDER BY a.bucket DESC) FILTER (WHERE a.pm25_last IS NOT NULL))[1] AS pm25_last,
    sum(a.pm10_sum) / nullif(sum(a.pm10_count), 0) AS pm10_avg,
    min(a.pm10_min) AS pm10_min,
    max(a.pm10_max) AS pm10_max,
    sum(a.pm10_count)::bigint AS pm10_count,
    sum(a.pm10_sum) AS pm10_sum,
    (array_agg(a.pm10_last ORDER BY a.bucket DESC) FILTER (WHERE a.pm10_last IS NOT NULL))[1] AS pm10_last,
    sum(a.no2_sum) / nullif(sum(a.no2_count), 0) AS no2_avg,
    min(a.no2_min) AS no2_min,
    max(a.no2_max) AS no2_max,
    sum(a.no2_count)::bigint AS no2_count,
    sum(a.no2_sum) AS no2_sum,
    (array_agg(a.no2_last ORDER BY a.bucket DESC) FILTER (WHERE a.no2_last IS NOT NULL))[1] AS no2_last,
    sum(a.o3_sum) / nullif(sum(a.o3_count), 0) AS o3_avg,
    min(a.o3_min) AS o3_min,
    max(a.o3_max) AS o3_max,
    sum(a.o3_count)::bigint AS o3_count,
    sum(a.o3_sum) AS o3_sum,
    (array_agg(a.o3_last ORDER BY a.bucket DESC) FILTER (WHERE a.o3_last IS NOT NULL))[1] AS o3_last,
    sum(a.temperature_c_sum) / nullif(sum(a.temperature_c_count), 0) AS temperature_c_avg,
    min(a.temperature_c_min) AS temperature_c_min,
    max(a.temperature_c_max) AS temperature_c_max,
    sum(a.temperature_c_count)::bigint AS temperature_c_count,
    sum(a.temperature_c_sum) AS temperature_c_sum,
    (array_agg(a.temperature_c_last ORDER BY a.bucket DESC) FILTER (WHERE a.temperature_c_last IS NOT NULL))[1] AS temperature_c_last,
    sum(a.humidity_pct_sum) / nullif(sum(a.humidity_pct_count), 0) AS humidity_pct_avg,
    min(a.humidity_pct_min) AS humidity_pct_min,
    max(a.humidity_pct_max) AS humidity_pct_max,
    sum(a.humidity_pct_count)::bigint AS humidity_pct_count,
    sum(a.humidity_pct_sum) AS humidity_pct_sum,
    (array_agg(a.humidity_pct_last ORDER BY a.bucket DESC) FILTER (WHERE a.humidity_pct_last IS NOT NULL))[1] AS humidity_pct_last
FROM agg_1m_air_sensor a
WHERE a.bucket >= date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_air_sensor'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
GROUP BY 1, 2, 3;

-- Recomputes the buckets of air_sensor touched by rows committed since the last refresh; returns
-- how many (device, time range) pieces it recomputed. Run in a REPEATABLE READ transaction
-- to do each piece once (READ COMMITTED is also correct, it may only redo some next time).
-- jit off: JIT compiling these small per-range statements costs ~150 ms a call, ~100x the
-- work itself (measured with 200 devices and 30 daily partitions).
CREATE FUNCTION silobreak_refresh_rollups_air_sensor(settle interval) RETURNS bigint
LANGUAGE plpgsql SET client_min_messages = warning SET jit = off AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    prev pg_snapshot;
    pieces bigint;
    day date;
    month timestamp;
BEGIN
    SELECT cursor INTO STRICT prev FROM rollup_state WHERE relation = 'readings_air_sensor' FOR UPDATE;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_air_sensor
        (device_id text, lo timestamptz, hi timestamptz) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_hours_air_sensor
        (device_id text, h timestamptz) ON COMMIT DELETE ROWS;
    -- Empty at the start of every transaction (ON COMMIT DELETE ROWS); cheaper than TRUNCATE.
    -- Touched minutes per device, merged into runs where less than 10 minutes separate
    -- them: one range read per run instead of one per minute (a backfill is one run).
    INSERT INTO silobreak_dirty_air_sensor
    WITH touched AS (
        SELECT DISTINCT r.device_id, date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS b
        FROM readings_air_sensor r
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
        ANALYZE silobreak_dirty_air_sensor;
        -- A day (a partition) at a time: a join on the whole partitioned table would scan
        -- every partition, where one bounded by a day reads only that day's.
        FOR day IN
            SELECT DISTINCT d::date FROM silobreak_dirty_air_sensor,
                generate_series((lo AT TIME ZONE 'UTC')::date,
                                ((hi - INTERVAL '1 microsecond') AT TIME ZONE 'UTC')::date,
                                INTERVAL '1 day') AS d
        LOOP
            PERFORM silobreak_ensure_partitions('rollup_1m_air_sensor', day, day);
            PERFORM silobreak_ensure_month_partitions('rollup_1h_air_sensor', day, day);
            DELETE FROM rollup_1m_air_sensor x USING silobreak_dirty_air_sensor d
            WHERE x.device_id = d.device_id AND x.bucket >= d.lo AND x.bucket < d.hi
              AND x.bucket >= day::timestamp AT TIME ZONE 'UTC'
              AND x.bucket < (day + 1)::timestamp AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1m_air_sensor (bucket, device_id, service, pm25_avg, pm25_min, pm25_max, pm25_count, pm25_sum, pm25_last, pm10_avg, pm10_min, pm10_max, pm10_count, pm10_sum, pm10_last, no2_avg, no2_min, no2_max, no2_count, no2_sum, no2_last, o3_avg, o3_min, o3_max, o3_count, o3_sum, o3_last, temperature_c_avg, temperature_c_min, temperature_c_max, temperature_c_count, temperature_c_sum, temperature_c_last, humidity_pct_avg, humidity_pct_min, humidity_pct_max, humidity_pct_count, humidity_pct_sum, humidity_pct_last)
        SELECT a.* FROM silobreak_dirty_air_sensor d CROSS JOIN LATERAL (
            SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
                avg(r."pm25"::float8) AS pm25_avg,
    min(r."pm25"::float8) AS pm25_min,
    max(r."pm25"::float8) AS pm25_max,
    count(r."pm25"::float8) AS pm25_count,
    sum(r."pm25"::float8) AS pm25_sum,
    (array_agg(r."pm25"::float8 ORDER BY r.time DESC) FILTER (WHERE r."pm25" IS NOT NULL))[1] AS pm25_last,
    avg(r."pm10"::float8) AS pm10_avg,
    min(r."pm10"::float8) AS pm10_min,
    max(r."pm10"::float8) AS pm10_max,
    count(r."pm10"::float8) AS pm10_count,
    sum(r."pm10"::float8) AS pm10_sum,
    (array_agg(r."pm10"::float8 ORDER BY r.time DESC) FILTER (WHERE r."pm10" IS NOT NULL))[1] AS pm10_last,
    avg(r."no2"::float8) AS no2_avg,
    min(r."no2"::float8) AS no2_min,
    max(r."no2"::float8) AS no2_max,
    count(r."no2"::float8) AS no2_count,
    sum(r."no2"::float8) AS no2_sum,
    (array_agg(r."no2"::float8 ORDER BY r.time DESC) FILTER (WHERE r."no2" IS NOT NULL))[1] AS no2_last,
    avg(r."o3"::float8) AS o3_avg,
    min(r."o3"::float8) AS o3_min,
    max(r."o3"::float8) AS o3_max,
    count(r."o3"::float8) AS o3_count,
    sum(r."o3"::float8) AS o3_sum,
    (array_agg(r."o3"::float8 ORDER BY r.time DESC) FILTER (WHERE r."o3" IS NOT NULL))[1] AS o3_last,
    avg(r."temperature_c"::float8) AS temperature_c_avg,
    min(r."temperature_c"::float8) AS temperature_c_min,
    max(r."temperature_c"::float8) AS temperature_c_max,
    count(r."temperature_c"::float8) AS temperature_c_count,
    sum(r."temperature_c"::float8) AS temperature_c_sum,
    (array_agg(r."temperature_c"::float8 ORDER BY r.time DESC) FILTER (WHERE r."temperature_c" IS NOT NULL))[1] AS temperature_c_last,
    avg(r."humidity_pct"::float8) AS humidity_pct_avg,
    min(r."humidity_pct"::float8) AS humidity_pct_min,
    max(r."humidity_pct"::float8) AS humidity_pct_max,
    count(r."humidity_pct"::float8) AS humidity_pct_count,
    sum(r."humidity_pct"::float8) AS humidity_pct_sum,
    (array_agg(r."humidity_pct"::float8 ORDER BY r.time DESC) FILTER (WHERE r."humidity_pct" IS NOT NULL))[1] AS humidity_pct_last
            FROM readings_air_sensor r
            WHERE r.device_id = d.device_id AND r.time >= d.lo AND r.time < d.hi
            GROUP BY 1, 2, 3) a;
        INSERT INTO silobreak_dirty_hours_air_sensor
        SELECT DISTINCT d.device_id, h FROM silobreak_dirty_air_sensor d,
            generate_series(date_bin(INTERVAL '1 hour', d.lo, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            date_bin(INTERVAL '1 hour', d.hi - INTERVAL '1 microsecond', TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            INTERVAL '1 hour') AS h;
        ANALYZE silobreak_dirty_hours_air_sensor;
        FOR month IN
            SELECT DISTINCT date_trunc('month', h AT TIME ZONE 'UTC') FROM silobreak_dirty_hours_air_sensor
        LOOP
            DELETE FROM rollup_1h_air_sensor x USING silobreak_dirty_hours_air_sensor d
            WHERE x.device_id = d.device_id AND x.bucket = d.h
              AND x.bucket >= month AT TIME ZONE 'UTC'
              AND x.bucket < (month + INTERVAL '1 month') AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1h_air_sensor (bucket, device_id, service, pm25_avg, pm25_min, pm25_max, pm25_count, pm25_sum, pm25_last, pm10_avg, pm10_min, pm10_max, pm10_count, pm10_sum, pm10_last, no2_avg, no2_min, no2_max, no2_count, no2_sum, no2_last, o3_avg, o3_min, o3_max, o3_count, o3_sum, o3_last, temperature_c_avg, temperature_c_min, temperature_c_max, temperature_c_count, temperature_c_sum, temperature_c_last, humidity_pct_avg, humidity_pct_min, humidity_pct_max, humidity_pct_count, humidity_pct_sum, humidity_pct_last)
        SELECT d.h, a.* FROM silobreak_dirty_hours_air_sensor d CROSS JOIN LATERAL (
            SELECT a.device_id, a.service,
                sum(a.pm25_sum) / nullif(sum(a.pm25_count), 0) AS pm25_avg,
    min(a.pm25_min) AS pm25_min,
    max(a.pm25_max) AS pm25_max,
    sum(a.pm25_count)::bigint AS pm25_count,
    sum(a.pm25_sum) AS pm25_sum,
    (array_agg(a.pm25_last ORDER BY a.bucket DESC) FILTER (WHERE a.pm25_last IS NOT NULL))[1] AS pm25_last,
    sum(a.pm10_sum) / nullif(sum(a.pm10_count), 0) AS pm10_avg,
    min(a.pm10_min) AS pm10_min,
    max(a.pm10_max) AS pm10_max,
    sum(a.pm10_count)::bigint AS pm10_count,
    sum(a.pm10_sum) AS pm10_sum,
    (array_agg(a.pm10_last ORDER BY a.bucket DESC) FILTER (WHERE a.pm10_last IS NOT NULL))[1] AS pm10_last,
    sum(a.no2_sum) / nullif(sum(a.no2_count), 0) AS no2_avg,
    min(a.no2_min) AS no2_min,
    max(a.no2_max) AS no2_max,
    sum(a.no2_count)::bigint AS no2_count,
    sum(a.no2_sum) AS no2_sum,
    (array_agg(a.no2_last ORDER BY a.bucket DESC) FILTER (WHERE a.no2_last IS NOT NULL))[1] AS no2_last,
    sum(a.o3_sum) / nullif(sum(a.o3_count), 0) AS o3_avg,
    min(a.o3_min) AS o3_min,
    max(a.o3_max) AS o3_max,
    sum(a.o3_count)::bigint AS o3_count,
    sum(a.o3_sum) AS o3_sum,
    (array_agg(a.o3_last ORDER BY a.bucket DESC) FILTER (WHERE a.o3_last IS NOT NULL))[1] AS o3_last,
    sum(a.temperature_c_sum) / nullif(sum(a.temperature_c_count), 0) AS temperature_c_avg,
    min(a.temperature_c_min) AS temperature_c_min,
    max(a.temperature_c_max) AS temperature_c_max,
    sum(a.temperature_c_count)::bigint AS temperature_c_count,
    sum(a.temperature_c_sum) AS temperature_c_sum,
    (array_agg(a.temperature_c_last ORDER BY a.bucket DESC) FILTER (WHERE a.temperature_c_last IS NOT NULL))[1] AS temperature_c_last,
    sum(a.humidity_pct_sum) / nullif(sum(a.humidity_pct_count), 0) AS humidity_pct_avg,
    min(a.humidity_pct_min) AS humidity_pct_min,
    max(a.humidity_pct_max) AS humidity_pct_max,
    sum(a.humidity_pct_count)::bigint AS humidity_pct_count,
    sum(a.humidity_pct_sum) AS humidity_pct_sum,
    (array_agg(a.humidity_pct_last ORDER BY a.bucket DESC) FILTER (WHERE a.humidity_pct_last IS NOT NULL))[1] AS humidity_pct_last
            FROM rollup_1m_air_sensor a
            WHERE a.device_id = d.device_id AND a.bucket >= d.h AND a.bucket < d.h + INTERVAL '1 hour'
            GROUP BY 1, 2) a;
    END IF;
    UPDATE rollup_state
    SET cursor = snap, updated_at = now(),
        watermark = greatest(watermark, date_bin(INTERVAL '1 minute', now() - settle, TIMESTAMPTZ '2000-01-03 00:00:00+00'))
    WHERE relation = 'readings_air_sensor';
    RETURN pieces;
END $$;

-- meter --------------------------------------------------------------------------------
-- Daily partitions like the raw table (retention drops them by day); hourly rows are 60x
-- fewer, so a month per partition.
CREATE TABLE rollup_1m_meter (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    index_avg double precision,
    index_min double precision,
    index_max double precision,
    index_count bigint NOT NULL,
    index_sum double precision,
    index_last double precision,
    flow_avg double precision,
    flow_min double precision,
    flow_max double precision,
    flow_count bigint NOT NULL,
    flow_sum double precision,
    flow_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE TABLE rollup_1h_meter (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    index_avg double precision,
    index_min double precision,
    index_max double precision,
    index_count bigint NOT NULL,
    index_sum double precision,
    index_last double precision,
    flow_avg double precision,
    flow_min double precision,
    flow_max double precision,
    flow_count bigint NOT NULL,
    flow_sum double precision,
    flow_last double precision,
    PRIMARY KEY (device_id, bucket, service)
) PARTITION BY RANGE (bucket);

CREATE VIEW agg_1m_meter AS
SELECT bucket, device_id, service, index_avg, index_min, index_max, index_count, index_sum, index_last, flow_avg, flow_min, flow_max, flow_count, flow_sum, flow_last
FROM rollup_1m_meter
WHERE bucket < silobreak_rollup_watermark('readings_meter')
UNION ALL
SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
    avg(r."index"::float8) AS index_avg,
    min(r."index"::float8) AS index_min,
    max(r."index"::float8) AS index_max,
    count(r."index"::float8) AS index_count,
    sum(r."index"::float8) AS index_sum,
    (array_agg(r."index"::float8 ORDER BY r.time DESC) FILTER (WHERE r."index" IS NOT NULL))[1] AS index_last,
    avg(r."flow"::float8) AS flow_avg,
    min(r."flow"::float8) AS flow_min,
    max(r."flow"::float8) AS flow_max,
    count(r."flow"::float8) AS flow_count,
    sum(r."flow"::float8) AS flow_sum,
    (array_agg(r."flow"::float8 ORDER BY r.time DESC) FILTER (WHERE r."flow" IS NOT NULL))[1] AS flow_last
FROM readings_meter r
WHERE r.time >= silobreak_rollup_watermark('readings_meter')
GROUP BY 1, 2, 3;

CREATE VIEW agg_1h_meter AS
SELECT bucket, device_id, service, index_avg, index_min, index_max, index_count, index_sum, index_last, flow_avg, flow_min, flow_max, flow_count, flow_sum, flow_last
FROM rollup_1h_meter
WHERE bucket < date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_meter'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
UNION ALL
SELECT date_bin(INTERVAL '1 hour', a.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, a.device_id, a.service,
    sum(a.index_sum) / nullif(sum(a.index_count), 0) AS index_avg,
    min(a.index_min) AS index_min,
    max(a.index_max) AS index_max,
    sum(a.index_count)::bigint AS index_count,
    sum(a.index_sum) AS index_sum,
    (array_agg(a.index_last ORDER BY a.bucket DESC) FILTER (WHERE a.index_last IS NOT NULL))[1] AS index_last,
    sum(a.flow_sum) / nullif(sum(a.flow_count), 0) AS flow_avg,
    min(a.flow_min) AS flow_min,
    max(a.flow_max) AS flow_max,
    sum(a.flow_count)::bigint AS flow_count,
    sum(a.flow_sum) AS flow_sum,
    (array_agg(a.flow_last ORDER BY a.bucket DESC) FILTER (WHERE a.flow_last IS NOT NULL))[1] AS flow_last
FROM agg_1m_meter a
WHERE a.bucket >= date_bin(INTERVAL '1 hour', silobreak_rollup_watermark('readings_meter'), TIMESTAMPTZ '2000-01-03 00:00:00+00')
GROUP BY 1, 2, 3;

-- Recomputes the buckets of meter touched by rows committed since the last refresh; returns
-- how many (device, time range) pieces it recomputed. Run in a REPEATABLE READ transaction
-- to do each piece once (READ COMMITTED is also correct, it may only redo some next time).
-- jit off: JIT compiling these small per-range statements costs ~150 ms a call, ~100x the
-- work itself (measured with 200 devices and 30 daily partitions).
CREATE FUNCTION silobreak_refresh_rollups_meter(settle interval) RETURNS bigint
LANGUAGE plpgsql SET client_min_messages = warning SET jit = off AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    prev pg_snapshot;
    pieces bigint;
    day date;
    month timestamp;
BEGIN
    SELECT cursor INTO STRICT prev FROM rollup_state WHERE relation = 'readings_meter' FOR UPDATE;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_meter
        (device_id text, lo timestamptz, hi timestamptz) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS silobreak_dirty_hours_meter
        (device_id text, h timestamptz) ON COMMIT DELETE ROWS;
    -- Empty at the start of every transaction (ON COMMIT DELETE ROWS); cheaper than TRUNCATE.
    -- Touched minutes per device, merged into runs where less than 10 minutes separate
    -- them: one range read per run instead of one per minute (a backfill is one run).
    INSERT INTO silobreak_dirty_meter
    WITH touched AS (
        SELECT DISTINCT r.device_id, date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS b
        FROM readings_meter r
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
        ANALYZE silobreak_dirty_meter;
        -- A day (a partition) at a time: a join on the whole partitioned table would scan
        -- every partition, where one bounded by a day reads only that day's.
        FOR day IN
            SELECT DISTINCT d::date FROM silobreak_dirty_meter,
                generate_series((lo AT TIME ZONE 'UTC')::date,
                                ((hi - INTERVAL '1 microsecond') AT TIME ZONE 'UTC')::date,
                                INTERVAL '1 day') AS d
        LOOP
            PERFORM silobreak_ensure_partitions('rollup_1m_meter', day, day);
            PERFORM silobreak_ensure_month_partitions('rollup_1h_meter', day, day);
            DELETE FROM rollup_1m_meter x USING silobreak_dirty_meter d
            WHERE x.device_id = d.device_id AND x.bucket >= d.lo AND x.bucket < d.hi
              AND x.bucket >= day::timestamp AT TIME ZONE 'UTC'
              AND x.bucket < (day + 1)::timestamp AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1m_meter (bucket, device_id, service, index_avg, index_min, index_max, index_count, index_sum, index_last, flow_avg, flow_min, flow_max, flow_count, flow_sum, flow_last)
        SELECT a.* FROM silobreak_dirty_meter d CROSS JOIN LATERAL (
            SELECT date_bin(INTERVAL '1 minute', r.time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, r.device_id, r.service,
                avg(r."index"::float8) AS index_avg,
    min(r."index"::float8) AS index_min,
    max(r."index"::float8) AS index_max,
    count(r."index"::float8) AS index_count,
    sum(r."index"::float8) AS index_sum,
    (array_agg(r."index"::float8 ORDER BY r.time DESC) FILTER (WHERE r."index" IS NOT NULL))[1] AS index_last,
    avg(r."flow"::float8) AS flow_avg,
    min(r."flow"::float8) AS flow_min,
    max(r."flow"::float8) AS flow_max,
    count(r."flow"::float8) AS flow_count,
    sum(r."flow"::float8) AS flow_sum,
    (array_agg(r."flow"::float8 ORDER BY r.time DESC) FILTER (WHERE r."flow" IS NOT NULL))[1] AS flow_last
            FROM readings_meter r
            WHERE r.device_id = d.device_id AND r.time >= d.lo AND r.time < d.hi
            GROUP BY 1, 2, 3) a;
        INSERT INTO silobreak_dirty_hours_meter
        SELECT DISTINCT d.device_id, h FROM silobreak_dirty_meter d,
            generate_series(date_bin(INTERVAL '1 hour', d.lo, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            date_bin(INTERVAL '1 hour', d.hi - INTERVAL '1 microsecond', TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                            INTERVAL '1 hour') AS h;
        ANALYZE silobreak_dirty_hours_meter;
        FOR month IN
            SELECT DISTINCT date_trunc('month', h AT TIME ZONE 'UTC') FROM silobreak_dirty_hours_meter
        LOOP
            DELETE FROM rollup_1h_meter x USING silobreak_dirty_hours_meter d
            WHERE x.device_id = d.device_id AND x.bucket = d.h
              AND x.bucket >= month AT TIME ZONE 'UTC'
              AND x.bucket < (month + INTERVAL '1 month') AT TIME ZONE 'UTC';
        END LOOP;
        INSERT INTO rollup_1h_meter (bucket, device_id, service, index_avg, index_min, index_max, index_count, index_sum, index_last, flow_avg, flow_min, flow_max, flow_count, flow_sum, flow_last)
        SELECT d.h, a.* FROM silobreak_dirty_hours_meter d CROSS JOIN LATERAL (
            SELECT a.device_id, a.service,
                sum(a.index_sum) / nullif(sum(a.index_count), 0) AS index_avg,
    min(a.index_min) AS index_min,
    max(a.index_max) AS index_max,
    sum(a.index_count)::bigint AS index_count,
    sum(a.index_sum) AS index_sum,
    (array_agg(a.index_last ORDER BY a.bucket DESC) FILTER (WHERE a.index_last IS NOT NULL))[1] AS index_last,
    sum(a.flow_sum) / nullif(sum(a.flow_count), 0) AS flow_avg,
    min(a.flow_min) AS flow_min,
    max(a.flow_max) AS flow_max,
    sum(a.flow_count)::bigint AS flow_count,
    sum(a.flow_sum) AS flow_sum,
    (array_agg(a.flow_last ORDER BY a.bucket DESC) FILTER (WHERE a.flow_last IS NOT NULL))[1] AS flow_last
            FROM rollup_1m_meter a
            WHERE a.device_id = d.device_id AND a.bucket >= d.h AND a.bucket < d.h + INTERVAL '1 hour'
            GROUP BY 1, 2) a;
    END IF;
    UPDATE rollup_state
    SET cursor = snap, updated_at = now(),
        watermark = greatest(watermark, date_bin(INTERVAL '1 minute', now() - settle, TIMESTAMPTZ '2000-01-03 00:00:00+00'))
    WHERE relation = 'readings_meter';
    RETURN pieces;
END $$;

-- Every device type's rollups; returns the pieces recomputed. `silobreak maintain` calls it
-- (it can also be scheduled with pg_cron: SELECT silobreak_refresh_rollups('2 minutes')).
CREATE FUNCTION silobreak_refresh_rollups(settle interval) RETURNS bigint
LANGUAGE sql AS $$
    SELECT silobreak_refresh_rollups_streetlight(settle) + silobreak_refresh_rollups_traffic_light(settle) + silobreak_refresh_rollups_air_sensor(settle) + silobreak_refresh_rollups_meter(settle)
$$;

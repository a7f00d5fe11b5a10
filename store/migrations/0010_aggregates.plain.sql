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
-- The per-type parts are generated from the device catalog by store/ddl (docs/store.md).

-- One row per readings table: the last refresh's snapshot (rows committed before it are in
-- the rollups) and the watermark below which the views read the rollups.
CREATE TABLE rollup_state (
    relation   text PRIMARY KEY,
    cursor     pg_snapshot NOT NULL,
    watermark  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
{{rollup_state_rows}}

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


{{rollups}}

-- Every device type's rollups; returns the pieces recomputed. `silobreak maintain` calls it
-- (it can also be scheduled with pg_cron: SELECT silobreak_refresh_rollups('2 minutes')).
{{refresh_all}}

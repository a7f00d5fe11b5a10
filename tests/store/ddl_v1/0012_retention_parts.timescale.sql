-- Retention on TimescaleDB: the chunks of each target and how to drop one (0011), and the
-- job that runs silobreak_retention() once a day.

INSERT INTO retention_targets (relation, kind, time_column) VALUES
    ('readings_streetlight', 'raw', 'time'),
    ('readings_traffic_light', 'raw', 'time'),
    ('readings_air_sensor', 'raw', 'time'),
    ('readings_meter', 'raw', 'time'),
    ('agg_1m_streetlight', 'aggregate', 'bucket'),
    ('agg_1m_traffic_light', 'aggregate', 'bucket'),
    ('agg_1m_air_sensor', 'aggregate', 'bucket'),
    ('agg_1m_meter', 'aggregate', 'bucket'),
    ('agg_1h_streetlight', 'aggregate', 'bucket'),
    ('agg_1h_traffic_light', 'aggregate', 'bucket'),
    ('agg_1h_air_sensor', 'aggregate', 'bucket'),
    ('agg_1h_meter', 'aggregate', 'bucket');

-- The chunks of a hypertable, or of a continuous aggregate's materialization hypertable,
-- whose range ends at or before `before`. Rows are read and deleted through the hypertable
-- with the chunk's range: that reaches compressed chunks' batches too.
CREATE FUNCTION silobreak_time_parts(relation text, before timestamptz)
RETURNS TABLE (part oid, part_name text, store regclass, lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE AS $$
    WITH rel AS (
        SELECT n.nspname AS schema_name, c.relname AS rel_name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = to_regclass(relation)
    ), hyper AS (
        SELECT coalesce(ca.materialization_hypertable_schema, rel.schema_name) AS hs,
               coalesce(ca.materialization_hypertable_name, rel.rel_name) AS hn
        FROM rel LEFT JOIN timescaledb_information.continuous_aggregates ca
            ON ca.view_schema = rel.schema_name AND ca.view_name = rel.rel_name
    )
    SELECT format('%I.%I', ch.chunk_schema, ch.chunk_name)::regclass::oid, ch.chunk_name::text,
           format('%I.%I', hyper.hs, hyper.hn)::regclass, ch.range_start, ch.range_end
    FROM hyper JOIN timescaledb_information.chunks ch
        ON ch.hypertable_schema = hyper.hs AND ch.hypertable_name = hyper.hn
    WHERE ch.range_end <= before
    ORDER BY ch.range_start
$$;

-- drop_chunks() on the hypertable or continuous aggregate, bounded to the one chunk.
CREATE FUNCTION silobreak_drop_part(relation text, part oid, lo timestamptz, hi timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM drop_chunks(to_regclass(relation), older_than => hi, newer_than => lo);
END $$;

-- Daily, like TimescaleDB's own retention policies; an hour past midnight UTC so the day
-- that just passed a cutoff goes the same night.
SELECT add_job('silobreak_retention', INTERVAL '1 day',
               initial_start => date_trunc('day', now()) + INTERVAL '1 day 1 hour');

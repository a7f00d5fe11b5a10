-- Retention on plain PostgreSQL: the partitions of each target and how to drop one
-- (0011_retention.sql). Run by `silobreak maintain`, or by pg_cron:
-- CALL silobreak_retention().

INSERT INTO retention_targets (relation, kind, time_column) VALUES
    ('readings_streetlight', 'raw', 'time'),
    ('readings_traffic_light', 'raw', 'time'),
    ('readings_air_sensor', 'raw', 'time'),
    ('readings_meter', 'raw', 'time'),
    ('rollup_1m_streetlight', 'aggregate', 'bucket'),
    ('rollup_1m_traffic_light', 'aggregate', 'bucket'),
    ('rollup_1m_air_sensor', 'aggregate', 'bucket'),
    ('rollup_1m_meter', 'aggregate', 'bucket'),
    ('rollup_1h_streetlight', 'aggregate', 'bucket'),
    ('rollup_1h_traffic_light', 'aggregate', 'bucket'),
    ('rollup_1h_air_sensor', 'aggregate', 'bucket'),
    ('rollup_1h_meter', 'aggregate', 'bucket');

-- The partitions of `relation` whose range ends at or before `before`: the partition itself
-- is where its rows are read and deleted.
CREATE FUNCTION silobreak_time_parts(relation text, before timestamptz)
RETURNS TABLE (part oid, part_name text, store regclass, lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.oid, c.relname::text, c.oid::regclass, b[1]::timestamptz, b[2]::timestamptz
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                    'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS b
    WHERE i.inhparent = to_regclass(relation) AND b[2]::timestamptz <= before
    ORDER BY 4
$$;

CREATE FUNCTION silobreak_drop_part(relation text, part oid, lo timestamptz, hi timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TABLE %s', part::regclass);
END $$;

-- One wide row per message and device type: a row per message costs a quarter of a row per
-- metric on the server, and the primary key (device_id, time) makes each metric unique on
-- (device_id, metric, time) as the `readings` view exposes it.
-- Plain PostgreSQL: native range partitioning by day; retention drops whole partitions.

{{readings_tables}}

-- Creates the daily partitions of one readings table that cover [first_day, last_day].
CREATE FUNCTION silobreak_ensure_partitions(parent text, first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day date := first_day;
    made integer := 0;
    part text;
BEGIN
    -- Serialises creators: two ingestors may meet the same new day at once.
    PERFORM pg_advisory_xact_lock(hashtext('silobreak_partitions:' || parent));
    WHILE day <= last_day LOOP
        part := parent || '_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, parent, day::timestamp AT TIME ZONE 'UTC',
                (day + 1)::timestamp AT TIME ZONE 'UTC');
            made := made + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN made;
END $$;

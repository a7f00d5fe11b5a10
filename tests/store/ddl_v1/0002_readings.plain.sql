-- One wide row per message and device type: a row per message costs a quarter of a row per
-- metric on the server, and the primary key (device_id, time) makes each metric unique on
-- (device_id, metric, time) as the `readings` view exposes it.
-- Plain PostgreSQL: native range partitioning by day; retention drops whole partitions.

CREATE TABLE readings_streetlight (
    time      timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    -- The id of the transaction that stored the row (commit-order cursors for streams).
    batch     bigint NOT NULL DEFAULT txid_current(),
    lamp_on smallint,
    dim_level double precision,
    power_w double precision,
    PRIMARY KEY (device_id, time)
) PARTITION BY RANGE (time);
CREATE INDEX readings_streetlight_batch_idx ON readings_streetlight (batch);

CREATE TABLE readings_traffic_light (
    time      timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    -- The id of the transaction that stored the row (commit-order cursors for streams).
    batch     bigint NOT NULL DEFAULT txid_current(),
    phase smallint,
    vehicle_count bigint,
    PRIMARY KEY (device_id, time)
) PARTITION BY RANGE (time);
CREATE INDEX readings_traffic_light_batch_idx ON readings_traffic_light (batch);

CREATE TABLE readings_air_sensor (
    time      timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    -- The id of the transaction that stored the row (commit-order cursors for streams).
    batch     bigint NOT NULL DEFAULT txid_current(),
    pm25 double precision,
    pm10 double precision,
    no2 double precision,
    o3 double precision,
    temperature_c double precision,
    humidity_pct double precision,
    PRIMARY KEY (device_id, time)
) PARTITION BY RANGE (time);
CREATE INDEX readings_air_sensor_batch_idx ON readings_air_sensor (batch);

CREATE TABLE readings_meter (
    time      timestamptz NOT NULL,
    device_id text NOT NULL,
    service   text NOT NULL,
    -- The id of the transaction that stored the row (commit-order cursors for streams).
    batch     bigint NOT NULL DEFAULT txid_current(),
    "index" double precision,
    flow double precision,
    PRIMARY KEY (device_id, time)
) PARTITION BY RANGE (time);
CREATE INDEX readings_meter_batch_idx ON readings_meter (batch);

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

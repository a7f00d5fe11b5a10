-- One wide row per message and device type: a row per message costs a quarter of a row per
-- metric on the server, and the primary key (device_id, time) makes each metric unique on
-- (device_id, metric, time) as the `readings` view exposes it.
-- TimescaleDB: one hypertable per device type, daily chunks, no default time index
-- (it adds ~75% to the insert cost next to the primary key).

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
);
SELECT create_hypertable('readings_streetlight', by_range('time', INTERVAL '1 day'),
    create_default_indexes => false);
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
);
SELECT create_hypertable('readings_traffic_light', by_range('time', INTERVAL '1 day'),
    create_default_indexes => false);
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
);
SELECT create_hypertable('readings_air_sensor', by_range('time', INTERVAL '1 day'),
    create_default_indexes => false);
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
);
SELECT create_hypertable('readings_meter', by_range('time', INTERVAL '1 day'),
    create_default_indexes => false);
CREATE INDEX readings_meter_batch_idx ON readings_meter (batch);


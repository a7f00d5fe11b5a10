-- Aggregates, compression and chunk sizes for the TimescaleDB backend (docs/store.md).
--
-- Per device type: a 1-minute continuous aggregate of the raw hypertable and a 1-hour one
-- built on it (hierarchical), both real-time (materialized_only = false: the part not yet
-- materialized is aggregated from raw rows at read time). Per metric they keep avg, min,
-- max, count, sum and last (the value at the latest reading time that has the metric);
-- `sum` makes 1-hour, coarser and pooled averages exact (sum / count). The plain backend's
-- rollup views (0010_aggregates.plain.sql) have the same names, columns and answers.
-- Generated from devices/catalog.py; a new metric needs a new migration.

-- Chunk interval, from the expected rate (docs/store.md has the arithmetic): a scaled-up
-- city of ~30,000 devices writes ~700 MB a day (rows and primary key) into streetlights,
-- ~300 MB into traffic lights and ~230 MB into meters, so a day's chunk of each (and the
-- three together) stays well inside a quarter of a modest server's memory while it takes
-- inserts. Air sensors are ~1% of the fleet (~40 MB a day): a week per chunk keeps their
-- chunks (and compressed batches) from being tiny. The 1-minute aggregates have as many
-- rows as the raw table for devices that report once a minute or less often: the same
-- interval (TimescaleDB's default would be 10x). The 1-hour ones are 60x smaller: 30 days.
SELECT set_chunk_time_interval('readings_streetlight', INTERVAL '1 day');
SELECT set_chunk_time_interval('readings_traffic_light', INTERVAL '1 day');
SELECT set_chunk_time_interval('readings_air_sensor', INTERVAL '7 days');
SELECT set_chunk_time_interval('readings_meter', INTERVAL '1 day');

CREATE MATERIALIZED VIEW agg_1m_streetlight
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', r.time) AS bucket, r.device_id, r.service,
    avg(r."lamp_on"::float8) AS lamp_on_avg,
    min(r."lamp_on"::float8) AS lamp_on_min,
    max(r."lamp_on"::float8) AS lamp_on_max,
    count(r."lamp_on"::float8) AS lamp_on_count,
    sum(r."lamp_on"::float8) AS lamp_on_sum,
    last(r."lamp_on"::float8, r.time) FILTER (WHERE r."lamp_on" IS NOT NULL) AS lamp_on_last,
    avg(r."dim_level"::float8) AS dim_level_avg,
    min(r."dim_level"::float8) AS dim_level_min,
    max(r."dim_level"::float8) AS dim_level_max,
    count(r."dim_level"::float8) AS dim_level_count,
    sum(r."dim_level"::float8) AS dim_level_sum,
    last(r."dim_level"::float8, r.time) FILTER (WHERE r."dim_level" IS NOT NULL) AS dim_level_last,
    avg(r."power_w"::float8) AS power_w_avg,
    min(r."power_w"::float8) AS power_w_min,
    max(r."power_w"::float8) AS power_w_max,
    count(r."power_w"::float8) AS power_w_count,
    sum(r."power_w"::float8) AS power_w_sum,
    last(r."power_w"::float8, r.time) FILTER (WHERE r."power_w" IS NOT NULL) AS power_w_last
FROM readings_streetlight r
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW agg_1h_streetlight
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', a.bucket) AS bucket, a.device_id, a.service,
    sum(a.lamp_on_sum) / nullif(sum(a.lamp_on_count), 0) AS lamp_on_avg,
    min(a.lamp_on_min) AS lamp_on_min,
    max(a.lamp_on_max) AS lamp_on_max,
    sum(a.lamp_on_count)::bigint AS lamp_on_count,
    sum(a.lamp_on_sum) AS lamp_on_sum,
    last(a.lamp_on_last, a.bucket) FILTER (WHERE a.lamp_on_last IS NOT NULL) AS lamp_on_last,
    sum(a.dim_level_sum) / nullif(sum(a.dim_level_count), 0) AS dim_level_avg,
    min(a.dim_level_min) AS dim_level_min,
    max(a.dim_level_max) AS dim_level_max,
    sum(a.dim_level_count)::bigint AS dim_level_count,
    sum(a.dim_level_sum) AS dim_level_sum,
    last(a.dim_level_last, a.bucket) FILTER (WHERE a.dim_level_last IS NOT NULL) AS dim_level_last,
    sum(a.power_w_sum) / nullif(sum(a.power_w_count), 0) AS power_w_avg,
    min(a.power_w_min) AS power_w_min,
    max(a.power_w_max) AS power_w_max,
    sum(a.power_w_count)::bigint AS power_w_count,
    sum(a.power_w_sum) AS power_w_sum,
    last(a.power_w_last, a.bucket) FILTER (WHERE a.power_w_last IS NOT NULL) AS power_w_last
FROM agg_1m_streetlight a
GROUP BY 1, 2, 3
WITH NO DATA;
SELECT set_chunk_time_interval('agg_1m_streetlight', INTERVAL '1 day');
SELECT set_chunk_time_interval('agg_1h_streetlight', INTERVAL '30 days');

CREATE MATERIALIZED VIEW agg_1m_traffic_light
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', r.time) AS bucket, r.device_id, r.service,
    avg(r."phase"::float8) AS phase_avg,
    min(r."phase"::float8) AS phase_min,
    max(r."phase"::float8) AS phase_max,
    count(r."phase"::float8) AS phase_count,
    sum(r."phase"::float8) AS phase_sum,
    last(r."phase"::float8, r.time) FILTER (WHERE r."phase" IS NOT NULL) AS phase_last,
    avg(r."vehicle_count"::float8) AS vehicle_count_avg,
    min(r."vehicle_count"::float8) AS vehicle_count_min,
    max(r."vehicle_count"::float8) AS vehicle_count_max,
    count(r."vehicle_count"::float8) AS vehicle_count_count,
    sum(r."vehicle_count"::float8) AS vehicle_count_sum,
    last(r."vehicle_count"::float8, r.time) FILTER (WHERE r."vehicle_count" IS NOT NULL) AS vehicle_count_last
FROM readings_traffic_light r
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW agg_1h_traffic_light
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', a.bucket) AS bucket, a.device_id, a.service,
    sum(a.phase_sum) / nullif(sum(a.phase_count), 0) AS phase_avg,
    min(a.phase_min) AS phase_min,
    max(a.phase_max) AS phase_max,
    sum(a.phase_count)::bigint AS phase_count,
    sum(a.phase_sum) AS phase_sum,
    last(a.phase_last, a.bucket) FILTER (WHERE a.phase_last IS NOT NULL) AS phase_last,
    sum(a.vehicle_count_sum) / nullif(sum(a.vehicle_count_count), 0) AS vehicle_count_avg,
    min(a.vehicle_count_min) AS vehicle_count_min,
    max(a.vehicle_count_max) AS vehicle_count_max,
    sum(a.vehicle_count_count)::bigint AS vehicle_count_count,
    sum(a.vehicle_count_sum) AS vehicle_count_sum,
    last(a.vehicle_count_last, a.bucket) FILTER (WHERE a.vehicle_count_last IS NOT NULL) AS vehicle_count_last
FROM agg_1m_traffic_light a
GROUP BY 1, 2, 3
WITH NO DATA;
SELECT set_chunk_time_interval('agg_1m_traffic_light', INTERVAL '1 day');
SELECT set_chunk_time_interval('agg_1h_traffic_light', INTERVAL '30 days');

CREATE MATERIALIZED VIEW agg_1m_air_sensor
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', r.time) AS bucket, r.device_id, r.service,
    avg(r."pm25"::float8) AS pm25_avg,
    min(r."pm25"::float8) AS pm25_min,
    max(r."pm25"::float8) AS pm25_max,
    count(r."pm25"::float8) AS pm25_count,
    sum(r."pm25"::float8) AS pm25_sum,
    last(r."pm25"::float8, r.time) FILTER (WHERE r."pm25" IS NOT NULL) AS pm25_last,
    avg(r."pm10"::float8) AS pm10_avg,
    min(r."pm10"::float8) AS pm10_min,
    max(r."pm10"::float8) AS pm10_max,
    count(r."pm10"::float8) AS pm10_count,
    sum(r."pm10"::float8) AS pm10_sum,
    last(r."pm10"::float8, r.time) FILTER (WHERE r."pm10" IS NOT NULL) AS pm10_last,
    avg(r."no2"::float8) AS no2_avg,
    min(r."no2"::float8) AS no2_min,
    max(r."no2"::float8) AS no2_max,
    count(r."no2"::float8) AS no2_count,
    sum(r."no2"::float8) AS no2_sum,
    last(r."no2"::float8, r.time) FILTER (WHERE r."no2" IS NOT NULL) AS no2_last,
    avg(r."o3"::float8) AS o3_avg,
    min(r."o3"::float8) AS o3_min,
    max(r."o3"::float8) AS o3_max,
    count(r."o3"::float8) AS o3_count,
    sum(r."o3"::float8) AS o3_sum,
    last(r."o3"::float8, r.time) FILTER (WHERE r."o3" IS NOT NULL) AS o3_last,
    avg(r."temperature_c"::float8) AS temperature_c_avg,
    min(r."temperature_c"::float8) AS temperature_c_min,
    max(r."temperature_c"::float8) AS temperature_c_max,
    count(r."temperature_c"::float8) AS temperature_c_count,
    sum(r."temperature_c"::float8) AS temperature_c_sum,
    last(r."temperature_c"::float8, r.time) FILTER (WHERE r."temperature_c" IS NOT NULL) AS temperature_c_last,
    avg(r."humidity_pct"::float8) AS humidity_pct_avg,
    min(r."humidity_pct"::float8) AS humidity_pct_min,
    max(r."humidity_pct"::float8) AS humidity_pct_max,
    count(r."humidity_pct"::float8) AS humidity_pct_count,
    sum(r."humidity_pct"::float8) AS humidity_pct_sum,
    last(r."humidity_pct"::float8, r.time) FILTER (WHERE r."humidity_pct" IS NOT NULL) AS humidity_pct_last
FROM readings_air_sensor r
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW agg_1h_air_sensor
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', a.bucket) AS bucket, a.device_id, a.service,
    sum(a.pm25_sum) / nullif(sum(a.pm25_count), 0) AS pm25_avg,
    min(a.pm25_min) AS pm25_min,
    max(a.pm25_max) AS pm25_max,
    sum(a.pm25_count)::bigint AS pm25_count,
    sum(a.pm25_sum) AS pm25_sum,
    last(a.pm25_last, a.bucket) FILTER (WHERE a.pm25_last IS NOT NULL) AS pm25_last,
    sum(a.pm10_sum) / nullif(sum(a.pm10_count), 0) AS pm10_avg,
    min(a.pm10_min) AS pm10_min,
    max(a.pm10_max) AS pm10_max,
    sum(a.pm10_count)::bigint AS pm10_count,
    sum(a.pm10_sum) AS pm10_sum,
    last(a.pm10_last, a.bucket) FILTER (WHERE a.pm10_last IS NOT NULL) AS pm10_last,
    sum(a.no2_sum) / nullif(sum(a.no2_count), 0) AS no2_avg,
    min(a.no2_min) AS no2_min,
    max(a.no2_max) AS no2_max,
    sum(a.no2_count)::bigint AS no2_count,
    sum(a.no2_sum) AS no2_sum,
    last(a.no2_last, a.bucket) FILTER (WHERE a.no2_last IS NOT NULL) AS no2_last,
    sum(a.o3_sum) / nullif(sum(a.o3_count), 0) AS o3_avg,
    min(a.o3_min) AS o3_min,
    max(a.o3_max) AS o3_max,
    sum(a.o3_count)::bigint AS o3_count,
    sum(a.o3_sum) AS o3_sum,
    last(a.o3_last, a.bucket) FILTER (WHERE a.o3_last IS NOT NULL) AS o3_last,
    sum(a.temperature_c_sum) / nullif(sum(a.temperature_c_count), 0) AS temperature_c_avg,
    min(a.temperature_c_min) AS temperature_c_min,
    max(a.temperature_c_max) AS temperature_c_max,
    sum(a.temperature_c_count)::bigint AS temperature_c_count,
    sum(a.temperature_c_sum) AS temperature_c_sum,
    last(a.temperature_c_last, a.bucket) FILTER (WHERE a.temperature_c_last IS NOT NULL) AS temperature_c_last,
    sum(a.humidity_pct_sum) / nullif(sum(a.humidity_pct_count), 0) AS humidity_pct_avg,
    min(a.humidity_pct_min) AS humidity_pct_min,
    max(a.humidity_pct_max) AS humidity_pct_max,
    sum(a.humidity_pct_count)::bigint AS humidity_pct_count,
    sum(a.humidity_pct_sum) AS humidity_pct_sum,
    last(a.humidity_pct_last, a.bucket) FILTER (WHERE a.humidity_pct_last IS NOT NULL) AS humidity_pct_last
FROM agg_1m_air_sensor a
GROUP BY 1, 2, 3
WITH NO DATA;
SELECT set_chunk_time_interval('agg_1m_air_sensor', INTERVAL '7 days');
SELECT set_chunk_time_interval('agg_1h_air_sensor', INTERVAL '30 days');

CREATE MATERIALIZED VIEW agg_1m_meter
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', r.time) AS bucket, r.device_id, r.service,
    avg(r."index"::float8) AS index_avg,
    min(r."index"::float8) AS index_min,
    max(r."index"::float8) AS index_max,
    count(r."index"::float8) AS index_count,
    sum(r."index"::float8) AS index_sum,
    last(r."index"::float8, r.time) FILTER (WHERE r."index" IS NOT NULL) AS index_last,
    avg(r."flow"::float8) AS flow_avg,
    min(r."flow"::float8) AS flow_min,
    max(r."flow"::float8) AS flow_max,
    count(r."flow"::float8) AS flow_count,
    sum(r."flow"::float8) AS flow_sum,
    last(r."flow"::float8, r.time) FILTER (WHERE r."flow" IS NOT NULL) AS flow_last
FROM readings_meter r
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW agg_1h_meter
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', a.bucket) AS bucket, a.device_id, a.service,
    sum(a.index_sum) / nullif(sum(a.index_count), 0) AS index_avg,
    min(a.index_min) AS index_min,
    max(a.index_max) AS index_max,
    sum(a.index_count)::bigint AS index_count,
    sum(a.index_sum) AS index_sum,
    last(a.index_last, a.bucket) FILTER (WHERE a.index_last IS NOT NULL) AS index_last,
    sum(a.flow_sum) / nullif(sum(a.flow_count), 0) AS flow_avg,
    min(a.flow_min) AS flow_min,
    max(a.flow_max) AS flow_max,
    sum(a.flow_count)::bigint AS flow_count,
    sum(a.flow_sum) AS flow_sum,
    last(a.flow_last, a.bucket) FILTER (WHERE a.flow_last IS NOT NULL) AS flow_last
FROM agg_1m_meter a
GROUP BY 1, 2, 3
WITH NO DATA;
SELECT set_chunk_time_interval('agg_1m_meter', INTERVAL '1 day');
SELECT set_chunk_time_interval('agg_1h_meter', INTERVAL '30 days');

-- Refresh policies. A refresh re-materializes only what was invalidated (inserted, merged or
-- deleted) inside its window, so a window of 8 days costs nothing where nothing changed and
-- picks up every late reading ingest accepts (7 days, SILOBREAK_INGEST_MAX_AGE). Backfills
-- older than that refresh their own range (store/bulk.py). The schedules bound the real-time
-- tail that reads aggregate from raw rows; buckets_per_batch => 0: one refresh per run (the
-- default makes one transaction per bucket).
SELECT add_continuous_aggregate_policy('agg_1m_streetlight', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '2 minutes', schedule_interval => INTERVAL '5 minutes', buckets_per_batch => 0);
SELECT add_continuous_aggregate_policy('agg_1h_streetlight', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', buckets_per_batch => 0);
SELECT add_continuous_aggregate_policy('agg_1m_traffic_light', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '2 minutes', schedule_interval => INTERVAL '5 minutes', buckets_per_batch => 0);
SELECT add_continuous_aggregate_policy('agg_1h_traffic_light', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', buckets_per_batch => 0);
SELECT add_continuous_aggregate_policy('agg_1m_air_sensor', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '2 minutes', schedule_interval => INTERVAL '5 minutes', buckets_per_batch => 0);
SELECT add_continuous_aggregate_policy('agg_1h_air_sensor', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', buckets_per_batch => 0);
SELECT add_continuous_aggregate_policy('agg_1m_meter', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '2 minutes', schedule_interval => INTERVAL '5 minutes', buckets_per_batch => 0);
SELECT add_continuous_aggregate_policy('agg_1h_meter', start_offset => INTERVAL '8 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', buckets_per_batch => 0);

-- Compression. The table is wide: each metric is already its own compressed column, so
-- segmenting by device gives one compressed array per (device, metric) and chunk; `service`
-- is in the segment too (a device changes owner rarely, so it adds almost no segments) so
-- that per-service retention and grants filter whole batches. Newest first inside a batch:
-- "latest" and recent-range reads stop early. Chunks are compressed once they are older
-- than ingest's late window (8 days), so live inserts never land in compressed chunks.
-- The 1-minute aggregates are as many rows as the raw table for devices reporting once a
-- minute or less often: compressed too, after their refresh window (TimescaleDB requires it).
ALTER TABLE readings_streetlight SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, service', timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('readings_streetlight', compress_after => INTERVAL '8 days');
ALTER MATERIALIZED VIEW agg_1m_streetlight SET (timescaledb.compress = true);
SELECT add_compression_policy('agg_1m_streetlight', compress_after => INTERVAL '10 days');
ALTER TABLE readings_traffic_light SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, service', timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('readings_traffic_light', compress_after => INTERVAL '8 days');
ALTER MATERIALIZED VIEW agg_1m_traffic_light SET (timescaledb.compress = true);
SELECT add_compression_policy('agg_1m_traffic_light', compress_after => INTERVAL '10 days');
ALTER TABLE readings_air_sensor SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, service', timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('readings_air_sensor', compress_after => INTERVAL '8 days');
ALTER MATERIALIZED VIEW agg_1m_air_sensor SET (timescaledb.compress = true);
SELECT add_compression_policy('agg_1m_air_sensor', compress_after => INTERVAL '10 days');
ALTER TABLE readings_meter SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, service', timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('readings_meter', compress_after => INTERVAL '8 days');
ALTER MATERIALIZED VIEW agg_1m_meter SET (timescaledb.compress = true);
SELECT add_compression_policy('agg_1m_meter', compress_after => INTERVAL '10 days');

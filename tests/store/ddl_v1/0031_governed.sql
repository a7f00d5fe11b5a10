-- Governed SQL: what a service (or data team) may read with plain SQL, under the same rules
-- as the HTTP API (docs/grafana.md). Each viewer logs in as a database role of its own
-- (`silobreak grafana roles`: grafana_<principal>), whose search_path is the schema `governed`
-- and which may read nothing else. The views below show it:
--   * its own readings (readings whose owning service is the viewer), whole;
--   * readings under its live raw grants: the grant's owner, device types, districts or
--     bounding box, metrics (others read as NULL), never personal-data devices;
--   * in the per-device aggregate views, also what its live aggregate grants pooled per device
--     allow, at a level whose bucket is a whole number of the grant's interval;
--   * in district_agg_1h_<type>, what its grants pooled per district allow, over at least
--     the pool minimum of devices (store_settings `streams_min_pool`, 5 by default).
-- Grants are read at query time: approving, revoking or expiring one takes effect at once.
-- Generated from devices/catalog.py; a new metric needs a new migration
-- (tests/store/test_governed.py checks the columns against the tables).

CREATE SCHEMA governed;

-- Which database role reads as which principal.
CREATE TABLE sql_viewers (
    role       text PRIMARY KEY,
    principal  text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The principal the current role reads as (none: the role sees nothing).
CREATE VIEW sql_viewer AS
SELECT principal FROM sql_viewers WHERE role = current_user;

-- For the current role: each device a live grant covers, with the grant's terms. A view
-- (not a function) so that it runs with the privileges of the governed views' owner while
-- current_user still names the role that queries.
CREATE VIEW sql_viewer_access AS
SELECT d.device_id, d.device_type, d.district, g.owner, g.granularity, g.interval_s, g.pool,
       g.min_devices, g.metrics
FROM sql_viewer v
JOIN grants g ON g.consumer = v.principal
JOIN devices d ON d.device_type = ANY (g.device_types)
WHERE g.status = 'active' AND g.expires_at > now()
  AND (g.districts IS NULL OR d.district = ANY (g.districts))
  AND (g.bbox IS NULL OR (d.lon BETWEEN g.bbox[1] AND g.bbox[3]
                          AND d.lat BETWEEN g.bbox[2] AND g.bbox[4]))
  -- Personal data leaves only as aggregates pooled per district (docs/streams.md).
  AND (NOT d.personal_data OR (g.granularity = 'aggregate' AND g.pool = 'district'));

CREATE VIEW governed.devices WITH (security_barrier) AS
SELECT d.device_id, d.device_type, d.service, d.district, d.lat, d.lon, d.medium,
       d.installed_at, d.personal_data, d.lifecycle, d.connection, d.last_seen
FROM devices d
WHERE d.service = (SELECT principal FROM sql_viewer)
   OR d.device_id IN (SELECT device_id FROM sql_viewer_access
                      WHERE granularity = 'raw' OR pool = 'device');

-- Dead letters of the devices the viewer owns now.
CREATE VIEW governed.rejected_messages WITH (security_barrier) AS
SELECT m.id, m.received_at, m.topic, m.device_id, m.reason, m.detail, m.payload
FROM rejected_messages m
WHERE m.device_id IN (SELECT device_id FROM devices
                      WHERE service = (SELECT principal FROM sql_viewer));


-- streetlight -----------------------------------------------------------------------------
CREATE VIEW governed.readings_streetlight WITH (security_barrier) AS
SELECT r.time, r.device_id, r.service, r.batch, r.lamp_on, r.dim_level, r.power_w
FROM readings_streetlight r
WHERE r.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT r.time, r.device_id, r.service, r.batch,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN r.lamp_on END AS lamp_on,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN r.dim_level END AS dim_level,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN r.power_w END AS power_w
FROM readings_streetlight r
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['lamp_on', 'dim_level', 'power_w'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'streetlight' AND (g.granularity = 'raw')
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = r.device_id AND x.owner = r.service
WHERE (r.lamp_on IS NOT NULL AND 'lamp_on' = ANY (x.metrics))
   OR (r.dim_level IS NOT NULL AND 'dim_level' = ANY (x.metrics))
   OR (r.power_w IS NOT NULL AND 'power_w' = ANY (x.metrics));

CREATE VIEW governed.agg_1m_streetlight WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.lamp_on_avg, a.lamp_on_min, a.lamp_on_max, a.lamp_on_count, a.lamp_on_sum, a.lamp_on_last, a.dim_level_avg, a.dim_level_min, a.dim_level_max, a.dim_level_count, a.dim_level_sum, a.dim_level_last, a.power_w_avg, a.power_w_min, a.power_w_max, a.power_w_count, a.power_w_sum, a.power_w_last
FROM agg_1m_streetlight a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_avg END AS lamp_on_avg,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_min END AS lamp_on_min,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_max END AS lamp_on_max,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_count END AS lamp_on_count,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_sum END AS lamp_on_sum,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_last END AS lamp_on_last,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_avg END AS dim_level_avg,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_min END AS dim_level_min,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_max END AS dim_level_max,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_count END AS dim_level_count,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_sum END AS dim_level_sum,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_last END AS dim_level_last,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_avg END AS power_w_avg,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_min END AS power_w_min,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_max END AS power_w_max,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_count END AS power_w_count,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_sum END AS power_w_sum,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_last END AS power_w_last
FROM agg_1m_streetlight a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['lamp_on', 'dim_level', 'power_w'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'streetlight' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 60 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.lamp_on_count > 0 AND 'lamp_on' = ANY (x.metrics))
   OR (a.dim_level_count > 0 AND 'dim_level' = ANY (x.metrics))
   OR (a.power_w_count > 0 AND 'power_w' = ANY (x.metrics));

CREATE VIEW governed.agg_1h_streetlight WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.lamp_on_avg, a.lamp_on_min, a.lamp_on_max, a.lamp_on_count, a.lamp_on_sum, a.lamp_on_last, a.dim_level_avg, a.dim_level_min, a.dim_level_max, a.dim_level_count, a.dim_level_sum, a.dim_level_last, a.power_w_avg, a.power_w_min, a.power_w_max, a.power_w_count, a.power_w_sum, a.power_w_last
FROM agg_1h_streetlight a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_avg END AS lamp_on_avg,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_min END AS lamp_on_min,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_max END AS lamp_on_max,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_count END AS lamp_on_count,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_sum END AS lamp_on_sum,
    CASE WHEN 'lamp_on' = ANY (x.metrics) THEN a.lamp_on_last END AS lamp_on_last,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_avg END AS dim_level_avg,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_min END AS dim_level_min,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_max END AS dim_level_max,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_count END AS dim_level_count,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_sum END AS dim_level_sum,
    CASE WHEN 'dim_level' = ANY (x.metrics) THEN a.dim_level_last END AS dim_level_last,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_avg END AS power_w_avg,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_min END AS power_w_min,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_max END AS power_w_max,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_count END AS power_w_count,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_sum END AS power_w_sum,
    CASE WHEN 'power_w' = ANY (x.metrics) THEN a.power_w_last END AS power_w_last
FROM agg_1h_streetlight a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['lamp_on', 'dim_level', 'power_w'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'streetlight' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 3600 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.lamp_on_count > 0 AND 'lamp_on' = ANY (x.metrics))
   OR (a.dim_level_count > 0 AND 'dim_level' = ANY (x.metrics))
   OR (a.power_w_count > 0 AND 'power_w' = ANY (x.metrics));

CREATE VIEW governed.district_agg_1h_streetlight WITH (security_barrier) AS
SELECT a.bucket, x.district, a.service,
    sum(a.lamp_on_sum) FILTER (WHERE 'lamp_on' = ANY (x.metrics)) / nullif(sum(a.lamp_on_count) FILTER (WHERE 'lamp_on' = ANY (x.metrics)), 0) AS lamp_on_avg,
    min(a.lamp_on_min) FILTER (WHERE 'lamp_on' = ANY (x.metrics)) AS lamp_on_min,
    max(a.lamp_on_max) FILTER (WHERE 'lamp_on' = ANY (x.metrics)) AS lamp_on_max,
    sum(a.lamp_on_count) FILTER (WHERE 'lamp_on' = ANY (x.metrics))::bigint AS lamp_on_count,
    sum(a.lamp_on_sum) FILTER (WHERE 'lamp_on' = ANY (x.metrics)) AS lamp_on_sum,
    sum(a.dim_level_sum) FILTER (WHERE 'dim_level' = ANY (x.metrics)) / nullif(sum(a.dim_level_count) FILTER (WHERE 'dim_level' = ANY (x.metrics)), 0) AS dim_level_avg,
    min(a.dim_level_min) FILTER (WHERE 'dim_level' = ANY (x.metrics)) AS dim_level_min,
    max(a.dim_level_max) FILTER (WHERE 'dim_level' = ANY (x.metrics)) AS dim_level_max,
    sum(a.dim_level_count) FILTER (WHERE 'dim_level' = ANY (x.metrics))::bigint AS dim_level_count,
    sum(a.dim_level_sum) FILTER (WHERE 'dim_level' = ANY (x.metrics)) AS dim_level_sum,
    sum(a.power_w_sum) FILTER (WHERE 'power_w' = ANY (x.metrics)) / nullif(sum(a.power_w_count) FILTER (WHERE 'power_w' = ANY (x.metrics)), 0) AS power_w_avg,
    min(a.power_w_min) FILTER (WHERE 'power_w' = ANY (x.metrics)) AS power_w_min,
    max(a.power_w_max) FILTER (WHERE 'power_w' = ANY (x.metrics)) AS power_w_max,
    sum(a.power_w_count) FILTER (WHERE 'power_w' = ANY (x.metrics))::bigint AS power_w_count,
    sum(a.power_w_sum) FILTER (WHERE 'power_w' = ANY (x.metrics)) AS power_w_sum,
    count(DISTINCT a.device_id) AS devices
FROM agg_1h_streetlight a
JOIN (SELECT g.device_id, g.owner, g.district, max(g.min_devices) AS min_devices,
             array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['lamp_on', 'dim_level', 'power_w'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'streetlight' AND g.granularity = 'aggregate' AND g.pool = 'district'
        AND 3600 % g.interval_s = 0
      GROUP BY g.device_id, g.owner, g.district) x
  ON x.device_id = a.device_id AND x.owner = a.service
GROUP BY a.bucket, x.district, a.service
HAVING count(DISTINCT a.device_id) >= greatest(max(x.min_devices), coalesce(
    (SELECT value::integer FROM store_settings WHERE key = 'streams_min_pool'), 5));


-- traffic_light ---------------------------------------------------------------------------
CREATE VIEW governed.readings_traffic_light WITH (security_barrier) AS
SELECT r.time, r.device_id, r.service, r.batch, r.phase, r.vehicle_count
FROM readings_traffic_light r
WHERE r.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT r.time, r.device_id, r.service, r.batch,
    CASE WHEN 'phase' = ANY (x.metrics) THEN r.phase END AS phase,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN r.vehicle_count END AS vehicle_count
FROM readings_traffic_light r
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['phase', 'vehicle_count'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'traffic_light' AND (g.granularity = 'raw')
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = r.device_id AND x.owner = r.service
WHERE (r.phase IS NOT NULL AND 'phase' = ANY (x.metrics))
   OR (r.vehicle_count IS NOT NULL AND 'vehicle_count' = ANY (x.metrics));

CREATE VIEW governed.agg_1m_traffic_light WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.phase_avg, a.phase_min, a.phase_max, a.phase_count, a.phase_sum, a.phase_last, a.vehicle_count_avg, a.vehicle_count_min, a.vehicle_count_max, a.vehicle_count_count, a.vehicle_count_sum, a.vehicle_count_last
FROM agg_1m_traffic_light a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_avg END AS phase_avg,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_min END AS phase_min,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_max END AS phase_max,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_count END AS phase_count,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_sum END AS phase_sum,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_last END AS phase_last,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_avg END AS vehicle_count_avg,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_min END AS vehicle_count_min,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_max END AS vehicle_count_max,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_count END AS vehicle_count_count,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_sum END AS vehicle_count_sum,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_last END AS vehicle_count_last
FROM agg_1m_traffic_light a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['phase', 'vehicle_count'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'traffic_light' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 60 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.phase_count > 0 AND 'phase' = ANY (x.metrics))
   OR (a.vehicle_count_count > 0 AND 'vehicle_count' = ANY (x.metrics));

CREATE VIEW governed.agg_1h_traffic_light WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.phase_avg, a.phase_min, a.phase_max, a.phase_count, a.phase_sum, a.phase_last, a.vehicle_count_avg, a.vehicle_count_min, a.vehicle_count_max, a.vehicle_count_count, a.vehicle_count_sum, a.vehicle_count_last
FROM agg_1h_traffic_light a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_avg END AS phase_avg,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_min END AS phase_min,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_max END AS phase_max,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_count END AS phase_count,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_sum END AS phase_sum,
    CASE WHEN 'phase' = ANY (x.metrics) THEN a.phase_last END AS phase_last,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_avg END AS vehicle_count_avg,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_min END AS vehicle_count_min,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_max END AS vehicle_count_max,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_count END AS vehicle_count_count,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_sum END AS vehicle_count_sum,
    CASE WHEN 'vehicle_count' = ANY (x.metrics) THEN a.vehicle_count_last END AS vehicle_count_last
FROM agg_1h_traffic_light a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['phase', 'vehicle_count'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'traffic_light' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 3600 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.phase_count > 0 AND 'phase' = ANY (x.metrics))
   OR (a.vehicle_count_count > 0 AND 'vehicle_count' = ANY (x.metrics));

CREATE VIEW governed.district_agg_1h_traffic_light WITH (security_barrier) AS
SELECT a.bucket, x.district, a.service,
    sum(a.phase_sum) FILTER (WHERE 'phase' = ANY (x.metrics)) / nullif(sum(a.phase_count) FILTER (WHERE 'phase' = ANY (x.metrics)), 0) AS phase_avg,
    min(a.phase_min) FILTER (WHERE 'phase' = ANY (x.metrics)) AS phase_min,
    max(a.phase_max) FILTER (WHERE 'phase' = ANY (x.metrics)) AS phase_max,
    sum(a.phase_count) FILTER (WHERE 'phase' = ANY (x.metrics))::bigint AS phase_count,
    sum(a.phase_sum) FILTER (WHERE 'phase' = ANY (x.metrics)) AS phase_sum,
    sum(a.vehicle_count_sum) FILTER (WHERE 'vehicle_count' = ANY (x.metrics)) / nullif(sum(a.vehicle_count_count) FILTER (WHERE 'vehicle_count' = ANY (x.metrics)), 0) AS vehicle_count_avg,
    min(a.vehicle_count_min) FILTER (WHERE 'vehicle_count' = ANY (x.metrics)) AS vehicle_count_min,
    max(a.vehicle_count_max) FILTER (WHERE 'vehicle_count' = ANY (x.metrics)) AS vehicle_count_max,
    sum(a.vehicle_count_count) FILTER (WHERE 'vehicle_count' = ANY (x.metrics))::bigint AS vehicle_count_count,
    sum(a.vehicle_count_sum) FILTER (WHERE 'vehicle_count' = ANY (x.metrics)) AS vehicle_count_sum,
    count(DISTINCT a.device_id) AS devices
FROM agg_1h_traffic_light a
JOIN (SELECT g.device_id, g.owner, g.district, max(g.min_devices) AS min_devices,
             array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['phase', 'vehicle_count'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'traffic_light' AND g.granularity = 'aggregate' AND g.pool = 'district'
        AND 3600 % g.interval_s = 0
      GROUP BY g.device_id, g.owner, g.district) x
  ON x.device_id = a.device_id AND x.owner = a.service
GROUP BY a.bucket, x.district, a.service
HAVING count(DISTINCT a.device_id) >= greatest(max(x.min_devices), coalesce(
    (SELECT value::integer FROM store_settings WHERE key = 'streams_min_pool'), 5));


-- air_sensor ------------------------------------------------------------------------------
CREATE VIEW governed.readings_air_sensor WITH (security_barrier) AS
SELECT r.time, r.device_id, r.service, r.batch, r.pm25, r.pm10, r.no2, r.o3, r.temperature_c, r.humidity_pct
FROM readings_air_sensor r
WHERE r.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT r.time, r.device_id, r.service, r.batch,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN r.pm25 END AS pm25,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN r.pm10 END AS pm10,
    CASE WHEN 'no2' = ANY (x.metrics) THEN r.no2 END AS no2,
    CASE WHEN 'o3' = ANY (x.metrics) THEN r.o3 END AS o3,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN r.temperature_c END AS temperature_c,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN r.humidity_pct END AS humidity_pct
FROM readings_air_sensor r
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['pm25', 'pm10', 'no2', 'o3', 'temperature_c', 'humidity_pct'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'air_sensor' AND (g.granularity = 'raw')
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = r.device_id AND x.owner = r.service
WHERE (r.pm25 IS NOT NULL AND 'pm25' = ANY (x.metrics))
   OR (r.pm10 IS NOT NULL AND 'pm10' = ANY (x.metrics))
   OR (r.no2 IS NOT NULL AND 'no2' = ANY (x.metrics))
   OR (r.o3 IS NOT NULL AND 'o3' = ANY (x.metrics))
   OR (r.temperature_c IS NOT NULL AND 'temperature_c' = ANY (x.metrics))
   OR (r.humidity_pct IS NOT NULL AND 'humidity_pct' = ANY (x.metrics));

CREATE VIEW governed.agg_1m_air_sensor WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.pm25_avg, a.pm25_min, a.pm25_max, a.pm25_count, a.pm25_sum, a.pm25_last, a.pm10_avg, a.pm10_min, a.pm10_max, a.pm10_count, a.pm10_sum, a.pm10_last, a.no2_avg, a.no2_min, a.no2_max, a.no2_count, a.no2_sum, a.no2_last, a.o3_avg, a.o3_min, a.o3_max, a.o3_count, a.o3_sum, a.o3_last, a.temperature_c_avg, a.temperature_c_min, a.temperature_c_max, a.temperature_c_count, a.temperature_c_sum, a.temperature_c_last, a.humidity_pct_avg, a.humidity_pct_min, a.humidity_pct_max, a.humidity_pct_count, a.humidity_pct_sum, a.humidity_pct_last
FROM agg_1m_air_sensor a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_avg END AS pm25_avg,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_min END AS pm25_min,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_max END AS pm25_max,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_count END AS pm25_count,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_sum END AS pm25_sum,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_last END AS pm25_last,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_avg END AS pm10_avg,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_min END AS pm10_min,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_max END AS pm10_max,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_count END AS pm10_count,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_sum END AS pm10_sum,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_last END AS pm10_last,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_avg END AS no2_avg,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_min END AS no2_min,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_max END AS no2_max,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_count END AS no2_count,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_sum END AS no2_sum,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_last END AS no2_last,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_avg END AS o3_avg,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_min END AS o3_min,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_max END AS o3_max,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_count END AS o3_count,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_sum END AS o3_sum,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_last END AS o3_last,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_avg END AS temperature_c_avg,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_min END AS temperature_c_min,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_max END AS temperature_c_max,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_count END AS temperature_c_count,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_sum END AS temperature_c_sum,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_last END AS temperature_c_last,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_avg END AS humidity_pct_avg,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_min END AS humidity_pct_min,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_max END AS humidity_pct_max,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_count END AS humidity_pct_count,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_sum END AS humidity_pct_sum,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_last END AS humidity_pct_last
FROM agg_1m_air_sensor a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['pm25', 'pm10', 'no2', 'o3', 'temperature_c', 'humidity_pct'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'air_sensor' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 60 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.pm25_count > 0 AND 'pm25' = ANY (x.metrics))
   OR (a.pm10_count > 0 AND 'pm10' = ANY (x.metrics))
   OR (a.no2_count > 0 AND 'no2' = ANY (x.metrics))
   OR (a.o3_count > 0 AND 'o3' = ANY (x.metrics))
   OR (a.temperature_c_count > 0 AND 'temperature_c' = ANY (x.metrics))
   OR (a.humidity_pct_count > 0 AND 'humidity_pct' = ANY (x.metrics));

CREATE VIEW governed.agg_1h_air_sensor WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.pm25_avg, a.pm25_min, a.pm25_max, a.pm25_count, a.pm25_sum, a.pm25_last, a.pm10_avg, a.pm10_min, a.pm10_max, a.pm10_count, a.pm10_sum, a.pm10_last, a.no2_avg, a.no2_min, a.no2_max, a.no2_count, a.no2_sum, a.no2_last, a.o3_avg, a.o3_min, a.o3_max, a.o3_count, a.o3_sum, a.o3_last, a.temperature_c_avg, a.temperature_c_min, a.temperature_c_max, a.temperature_c_count, a.temperature_c_sum, a.temperature_c_last, a.humidity_pct_avg, a.humidity_pct_min, a.humidity_pct_max, a.humidity_pct_count, a.humidity_pct_sum, a.humidity_pct_last
FROM agg_1h_air_sensor a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_avg END AS pm25_avg,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_min END AS pm25_min,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_max END AS pm25_max,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_count END AS pm25_count,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_sum END AS pm25_sum,
    CASE WHEN 'pm25' = ANY (x.metrics) THEN a.pm25_last END AS pm25_last,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_avg END AS pm10_avg,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_min END AS pm10_min,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_max END AS pm10_max,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_count END AS pm10_count,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_sum END AS pm10_sum,
    CASE WHEN 'pm10' = ANY (x.metrics) THEN a.pm10_last END AS pm10_last,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_avg END AS no2_avg,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_min END AS no2_min,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_max END AS no2_max,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_count END AS no2_count,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_sum END AS no2_sum,
    CASE WHEN 'no2' = ANY (x.metrics) THEN a.no2_last END AS no2_last,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_avg END AS o3_avg,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_min END AS o3_min,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_max END AS o3_max,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_count END AS o3_count,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_sum END AS o3_sum,
    CASE WHEN 'o3' = ANY (x.metrics) THEN a.o3_last END AS o3_last,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_avg END AS temperature_c_avg,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_min END AS temperature_c_min,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_max END AS temperature_c_max,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_count END AS temperature_c_count,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_sum END AS temperature_c_sum,
    CASE WHEN 'temperature_c' = ANY (x.metrics) THEN a.temperature_c_last END AS temperature_c_last,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_avg END AS humidity_pct_avg,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_min END AS humidity_pct_min,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_max END AS humidity_pct_max,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_count END AS humidity_pct_count,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_sum END AS humidity_pct_sum,
    CASE WHEN 'humidity_pct' = ANY (x.metrics) THEN a.humidity_pct_last END AS humidity_pct_last
FROM agg_1h_air_sensor a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['pm25', 'pm10', 'no2', 'o3', 'temperature_c', 'humidity_pct'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'air_sensor' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 3600 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.pm25_count > 0 AND 'pm25' = ANY (x.metrics))
   OR (a.pm10_count > 0 AND 'pm10' = ANY (x.metrics))
   OR (a.no2_count > 0 AND 'no2' = ANY (x.metrics))
   OR (a.o3_count > 0 AND 'o3' = ANY (x.metrics))
   OR (a.temperature_c_count > 0 AND 'temperature_c' = ANY (x.metrics))
   OR (a.humidity_pct_count > 0 AND 'humidity_pct' = ANY (x.metrics));

CREATE VIEW governed.district_agg_1h_air_sensor WITH (security_barrier) AS
SELECT a.bucket, x.district, a.service,
    sum(a.pm25_sum) FILTER (WHERE 'pm25' = ANY (x.metrics)) / nullif(sum(a.pm25_count) FILTER (WHERE 'pm25' = ANY (x.metrics)), 0) AS pm25_avg,
    min(a.pm25_min) FILTER (WHERE 'pm25' = ANY (x.metrics)) AS pm25_min,
    max(a.pm25_max) FILTER (WHERE 'pm25' = ANY (x.metrics)) AS pm25_max,
    sum(a.pm25_count) FILTER (WHERE 'pm25' = ANY (x.metrics))::bigint AS pm25_count,
    sum(a.pm25_sum) FILTER (WHERE 'pm25' = ANY (x.metrics)) AS pm25_sum,
    sum(a.pm10_sum) FILTER (WHERE 'pm10' = ANY (x.metrics)) / nullif(sum(a.pm10_count) FILTER (WHERE 'pm10' = ANY (x.metrics)), 0) AS pm10_avg,
    min(a.pm10_min) FILTER (WHERE 'pm10' = ANY (x.metrics)) AS pm10_min,
    max(a.pm10_max) FILTER (WHERE 'pm10' = ANY (x.metrics)) AS pm10_max,
    sum(a.pm10_count) FILTER (WHERE 'pm10' = ANY (x.metrics))::bigint AS pm10_count,
    sum(a.pm10_sum) FILTER (WHERE 'pm10' = ANY (x.metrics)) AS pm10_sum,
    sum(a.no2_sum) FILTER (WHERE 'no2' = ANY (x.metrics)) / nullif(sum(a.no2_count) FILTER (WHERE 'no2' = ANY (x.metrics)), 0) AS no2_avg,
    min(a.no2_min) FILTER (WHERE 'no2' = ANY (x.metrics)) AS no2_min,
    max(a.no2_max) FILTER (WHERE 'no2' = ANY (x.metrics)) AS no2_max,
    sum(a.no2_count) FILTER (WHERE 'no2' = ANY (x.metrics))::bigint AS no2_count,
    sum(a.no2_sum) FILTER (WHERE 'no2' = ANY (x.metrics)) AS no2_sum,
    sum(a.o3_sum) FILTER (WHERE 'o3' = ANY (x.metrics)) / nullif(sum(a.o3_count) FILTER (WHERE 'o3' = ANY (x.metrics)), 0) AS o3_avg,
    min(a.o3_min) FILTER (WHERE 'o3' = ANY (x.metrics)) AS o3_min,
    max(a.o3_max) FILTER (WHERE 'o3' = ANY (x.metrics)) AS o3_max,
    sum(a.o3_count) FILTER (WHERE 'o3' = ANY (x.metrics))::bigint AS o3_count,
    sum(a.o3_sum) FILTER (WHERE 'o3' = ANY (x.metrics)) AS o3_sum,
    sum(a.temperature_c_sum) FILTER (WHERE 'temperature_c' = ANY (x.metrics)) / nullif(sum(a.temperature_c_count) FILTER (WHERE 'temperature_c' = ANY (x.metrics)), 0) AS temperature_c_avg,
    min(a.temperature_c_min) FILTER (WHERE 'temperature_c' = ANY (x.metrics)) AS temperature_c_min,
    max(a.temperature_c_max) FILTER (WHERE 'temperature_c' = ANY (x.metrics)) AS temperature_c_max,
    sum(a.temperature_c_count) FILTER (WHERE 'temperature_c' = ANY (x.metrics))::bigint AS temperature_c_count,
    sum(a.temperature_c_sum) FILTER (WHERE 'temperature_c' = ANY (x.metrics)) AS temperature_c_sum,
    sum(a.humidity_pct_sum) FILTER (WHERE 'humidity_pct' = ANY (x.metrics)) / nullif(sum(a.humidity_pct_count) FILTER (WHERE 'humidity_pct' = ANY (x.metrics)), 0) AS humidity_pct_avg,
    min(a.humidity_pct_min) FILTER (WHERE 'humidity_pct' = ANY (x.metrics)) AS humidity_pct_min,
    max(a.humidity_pct_max) FILTER (WHERE 'humidity_pct' = ANY (x.metrics)) AS humidity_pct_max,
    sum(a.humidity_pct_count) FILTER (WHERE 'humidity_pct' = ANY (x.metrics))::bigint AS humidity_pct_count,
    sum(a.humidity_pct_sum) FILTER (WHERE 'humidity_pct' = ANY (x.metrics)) AS humidity_pct_sum,
    count(DISTINCT a.device_id) AS devices
FROM agg_1h_air_sensor a
JOIN (SELECT g.device_id, g.owner, g.district, max(g.min_devices) AS min_devices,
             array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['pm25', 'pm10', 'no2', 'o3', 'temperature_c', 'humidity_pct'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'air_sensor' AND g.granularity = 'aggregate' AND g.pool = 'district'
        AND 3600 % g.interval_s = 0
      GROUP BY g.device_id, g.owner, g.district) x
  ON x.device_id = a.device_id AND x.owner = a.service
GROUP BY a.bucket, x.district, a.service
HAVING count(DISTINCT a.device_id) >= greatest(max(x.min_devices), coalesce(
    (SELECT value::integer FROM store_settings WHERE key = 'streams_min_pool'), 5));


-- meter -----------------------------------------------------------------------------------
CREATE VIEW governed.readings_meter WITH (security_barrier) AS
SELECT r.time, r.device_id, r.service, r.batch, r."index", r.flow
FROM readings_meter r
WHERE r.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT r.time, r.device_id, r.service, r.batch,
    CASE WHEN 'index' = ANY (x.metrics) THEN r."index" END AS "index",
    CASE WHEN 'flow' = ANY (x.metrics) THEN r.flow END AS flow
FROM readings_meter r
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['index', 'flow'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'meter' AND (g.granularity = 'raw')
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = r.device_id AND x.owner = r.service
WHERE (r."index" IS NOT NULL AND 'index' = ANY (x.metrics))
   OR (r.flow IS NOT NULL AND 'flow' = ANY (x.metrics));

CREATE VIEW governed.agg_1m_meter WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.index_avg, a.index_min, a.index_max, a.index_count, a.index_sum, a.index_last, a.flow_avg, a.flow_min, a.flow_max, a.flow_count, a.flow_sum, a.flow_last
FROM agg_1m_meter a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_avg END AS index_avg,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_min END AS index_min,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_max END AS index_max,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_count END AS index_count,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_sum END AS index_sum,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_last END AS index_last,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_avg END AS flow_avg,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_min END AS flow_min,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_max END AS flow_max,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_count END AS flow_count,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_sum END AS flow_sum,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_last END AS flow_last
FROM agg_1m_meter a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['index', 'flow'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'meter' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 60 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.index_count > 0 AND 'index' = ANY (x.metrics))
   OR (a.flow_count > 0 AND 'flow' = ANY (x.metrics));

CREATE VIEW governed.agg_1h_meter WITH (security_barrier) AS
SELECT a.bucket, a.device_id, a.service, a.index_avg, a.index_min, a.index_max, a.index_count, a.index_sum, a.index_last, a.flow_avg, a.flow_min, a.flow_max, a.flow_count, a.flow_sum, a.flow_last
FROM agg_1h_meter a
WHERE a.service = (SELECT principal FROM sql_viewer)
UNION ALL
SELECT a.bucket, a.device_id, a.service,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_avg END AS index_avg,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_min END AS index_min,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_max END AS index_max,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_count END AS index_count,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_sum END AS index_sum,
    CASE WHEN 'index' = ANY (x.metrics) THEN a.index_last END AS index_last,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_avg END AS flow_avg,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_min END AS flow_min,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_max END AS flow_max,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_count END AS flow_count,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_sum END AS flow_sum,
    CASE WHEN 'flow' = ANY (x.metrics) THEN a.flow_last END AS flow_last
FROM agg_1h_meter a
JOIN (SELECT g.device_id, g.owner, array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['index', 'flow'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'meter' AND (g.granularity = 'raw' OR (g.granularity = 'aggregate' AND g.pool = 'device'
          AND 3600 % g.interval_s = 0))
      GROUP BY g.device_id, g.owner) x
  ON x.device_id = a.device_id AND x.owner = a.service
WHERE (a.index_count > 0 AND 'index' = ANY (x.metrics))
   OR (a.flow_count > 0 AND 'flow' = ANY (x.metrics));

CREATE VIEW governed.district_agg_1h_meter WITH (security_barrier) AS
SELECT a.bucket, x.district, a.service,
    sum(a.index_sum) FILTER (WHERE 'index' = ANY (x.metrics)) / nullif(sum(a.index_count) FILTER (WHERE 'index' = ANY (x.metrics)), 0) AS index_avg,
    min(a.index_min) FILTER (WHERE 'index' = ANY (x.metrics)) AS index_min,
    max(a.index_max) FILTER (WHERE 'index' = ANY (x.metrics)) AS index_max,
    sum(a.index_count) FILTER (WHERE 'index' = ANY (x.metrics))::bigint AS index_count,
    sum(a.index_sum) FILTER (WHERE 'index' = ANY (x.metrics)) AS index_sum,
    sum(a.flow_sum) FILTER (WHERE 'flow' = ANY (x.metrics)) / nullif(sum(a.flow_count) FILTER (WHERE 'flow' = ANY (x.metrics)), 0) AS flow_avg,
    min(a.flow_min) FILTER (WHERE 'flow' = ANY (x.metrics)) AS flow_min,
    max(a.flow_max) FILTER (WHERE 'flow' = ANY (x.metrics)) AS flow_max,
    sum(a.flow_count) FILTER (WHERE 'flow' = ANY (x.metrics))::bigint AS flow_count,
    sum(a.flow_sum) FILTER (WHERE 'flow' = ANY (x.metrics)) AS flow_sum,
    count(DISTINCT a.device_id) AS devices
FROM agg_1h_meter a
JOIN (SELECT g.device_id, g.owner, g.district, max(g.min_devices) AS min_devices,
             array_agg(DISTINCT m) AS metrics
      FROM sql_viewer_access g
      CROSS JOIN LATERAL unnest(CASE WHEN cardinality(g.metrics) = 0
          THEN ARRAY['index', 'flow'] ELSE g.metrics END) AS m
      WHERE g.device_type = 'meter' AND g.granularity = 'aggregate' AND g.pool = 'district'
        AND 3600 % g.interval_s = 0
      GROUP BY g.device_id, g.owner, g.district) x
  ON x.device_id = a.device_id AND x.owner = a.service
GROUP BY a.bucket, x.district, a.service
HAVING count(DISTINCT a.device_id) >= greatest(max(x.min_devices), coalesce(
    (SELECT value::integer FROM store_settings WHERE key = 'streams_min_pool'), 5));

-- The narrow view of 0003, over what the viewer may see.
CREATE VIEW governed.readings AS
SELECT r.time, r.device_id, r.service, 'streetlight'::text AS device_type, m.metric, m.value
FROM governed.readings_streetlight r
CROSS JOIN LATERAL (VALUES ('lamp_on', r.lamp_on::double precision), ('dim_level', r.dim_level::double precision), ('power_w', r.power_w::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL
UNION ALL
SELECT r.time, r.device_id, r.service, 'traffic_light'::text AS device_type, m.metric, m.value
FROM governed.readings_traffic_light r
CROSS JOIN LATERAL (VALUES ('phase', r.phase::double precision), ('vehicle_count', r.vehicle_count::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL
UNION ALL
SELECT r.time, r.device_id, r.service, 'air_sensor'::text AS device_type, m.metric, m.value
FROM governed.readings_air_sensor r
CROSS JOIN LATERAL (VALUES ('pm25', r.pm25::double precision), ('pm10', r.pm10::double precision), ('no2', r.no2::double precision), ('o3', r.o3::double precision), ('temperature_c', r.temperature_c::double precision), ('humidity_pct', r.humidity_pct::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL
UNION ALL
SELECT r.time, r.device_id, r.service, 'meter'::text AS device_type, m.metric, m.value
FROM governed.readings_meter r
CROSS JOIN LATERAL (VALUES ('index', r."index"::double precision), ('flow', r.flow::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL;

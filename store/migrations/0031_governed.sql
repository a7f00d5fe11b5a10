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
-- The per-type parts are generated from the device catalog by store/ddl (docs/store.md;
-- tests/store/test_governed.py checks the columns against the tables).

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


{{governed_types}}

-- The narrow view of 0003, over what the viewer may see.
{{governed_readings}}

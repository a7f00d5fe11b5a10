-- The public, narrow view of every reading: one row per metric per message.
CREATE VIEW readings AS
SELECT r.time, r.device_id, r.service, 'streetlight'::text AS device_type, m.metric, m.value
FROM readings_streetlight r
CROSS JOIN LATERAL (VALUES ('lamp_on', r.lamp_on::double precision), ('dim_level', r.dim_level::double precision), ('power_w', r.power_w::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL
UNION ALL
SELECT r.time, r.device_id, r.service, 'traffic_light'::text AS device_type, m.metric, m.value
FROM readings_traffic_light r
CROSS JOIN LATERAL (VALUES ('phase', r.phase::double precision), ('vehicle_count', r.vehicle_count::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL
UNION ALL
SELECT r.time, r.device_id, r.service, 'air_sensor'::text AS device_type, m.metric, m.value
FROM readings_air_sensor r
CROSS JOIN LATERAL (VALUES ('pm25', r.pm25::double precision), ('pm10', r.pm10::double precision), ('no2', r.no2::double precision), ('o3', r.o3::double precision), ('temperature_c', r.temperature_c::double precision), ('humidity_pct', r.humidity_pct::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL
UNION ALL
SELECT r.time, r.device_id, r.service, 'meter'::text AS device_type, m.metric, m.value
FROM readings_meter r
CROSS JOIN LATERAL (VALUES ('index', r."index"::double precision), ('flow', r.flow::double precision)) AS m(metric, value)
WHERE m.value IS NOT NULL;

-- One wide row per message and device type: a row per message costs a quarter of a row per
-- metric on the server, and the primary key (device_id, time) makes each metric unique on
-- (device_id, metric, time) as the `readings` view exposes it.
-- TimescaleDB: one hypertable per device type, daily chunks, no default time index
-- (it adds ~75% to the insert cost next to the primary key).

{{readings_tables}}


-- Platform health figures, recorded in the store every 10 s (store/platform_stats.py), so the
-- platform dashboard needs no datasource but the store; the Prometheus endpoints stay.

-- One row per ingest process and 10-second window: what it did in that window (deltas of
-- its counters), and its state at the window's end.
CREATE TABLE platform_stats (
    time        timestamptz NOT NULL,
    -- The recording process: `ingest:<client id>`.
    source      text NOT NULL,
    -- Seconds the counts cover (about 10; the first row after a start covers less).
    window_s    double precision NOT NULL CHECK (window_s > 0),
    received    bigint NOT NULL,
    stored      bigint NOT NULL,
    duplicates  bigint NOT NULL,
    rejected_payload_too_large      bigint NOT NULL,
    rejected_malformed_payload      bigint NOT NULL,
    rejected_unknown_device         bigint NOT NULL,
    rejected_schema_violation       bigint NOT NULL,
    rejected_timestamp_out_of_range bigint NOT NULL,
    -- Messages received and not yet acknowledged (waiting for their batch to commit).
    pending     bigint NOT NULL,
    batches     bigint NOT NULL,
    -- Mean time to commit one batch over the window; NULL when no batch was committed.
    commit_s    double precision,
    store_up    boolean NOT NULL,
    PRIMARY KEY (source, time)
);
CREATE INDEX platform_stats_time_idx ON platform_stats (time);

-- One row per 10-second slot for the whole city, written by whichever recorder gets there
-- first (the others' inserts conflict and are dropped): devices online and stream deliveries.
CREATE TABLE platform_fleet_stats (
    time               timestamptz PRIMARY KEY,
    window_s           double precision NOT NULL CHECK (window_s > 0),
    devices_online     integer NOT NULL,
    devices_offline    integer NOT NULL,
    -- Delivery batches and the readings in them (audit_log `delivery.batch`) since the
    -- previous row, counted by audit id: audit_upto is the last id counted.
    deliveries         bigint NOT NULL,
    delivered_readings bigint NOT NULL,
    audit_upto         bigint NOT NULL
);

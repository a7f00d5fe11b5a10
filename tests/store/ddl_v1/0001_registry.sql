-- The device registry, its ownership history and the dead-letter table.
CREATE TABLE devices (
    device_id     text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    device_type   text NOT NULL CHECK (device_type IN ('streetlight', 'traffic_light', 'air_sensor', 'meter')),
    service       text NOT NULL,
    district      text,
    lat           double precision,
    lon           double precision,
    medium        text,
    installed_at  timestamptz,
    personal_data boolean NOT NULL DEFAULT false,
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    lifecycle     text NOT NULL DEFAULT 'active' CHECK (lifecycle IN ('active', 'decommissioned')),
    connection    text NOT NULL DEFAULT 'offline' CHECK (connection IN ('online', 'offline')),
    last_seen     timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_service_idx ON devices (service, device_type);
CREATE INDEX devices_updated_idx ON devices (updated_at);

-- Who owned a device from when: a reading carries the owner at the reading's own time.
CREATE TABLE device_ownership (
    device_id  text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    valid_from timestamptz NOT NULL,
    service    text NOT NULL,
    PRIMARY KEY (device_id, valid_from)
);

-- Bumped by every registry change so ingestors notice it with one cheap query.
CREATE TABLE registry_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO registry_version VALUES (true, 1);

CREATE FUNCTION bump_registry_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_version SET version = version + 1;
    PERFORM pg_notify('silobreak_registry', '');
    RETURN NULL;
END $$;
CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
CREATE TRIGGER ownership_changed AFTER INSERT OR UPDATE OR DELETE ON device_ownership
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();

CREATE TABLE rejected_messages (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic       text NOT NULL,
    device_id   text,
    reason      text NOT NULL CHECK (reason IN ('payload_too_large', 'malformed_payload',
                    'unknown_device', 'schema_violation', 'timestamp_out_of_range')),
    detail      text NOT NULL DEFAULT '',
    payload     bytea NOT NULL
);
CREATE INDEX rejected_messages_reason_idx ON rejected_messages (reason, received_at);
CREATE INDEX rejected_messages_device_idx ON rejected_messages (device_id, received_at);

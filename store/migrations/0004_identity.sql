-- Identity: principals and their API tokens, device credentials, and the audit of admin actions.

-- Who asks: services own devices, data teams consume grants, the coordinator sees all,
-- components are the platform's own processes. Each has a broker account `kind~name`.
CREATE TABLE principals (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    kind        text NOT NULL CHECK (kind IN ('service', 'team', 'coordinator', 'component')),
    description text NOT NULL DEFAULT '',
    -- The broker's own hash of the account's secret (Mosquitto `$7$` PBKDF2-SHA512).
    broker_hash text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- HTTP API bearer tokens, stored as SHA-256 (hex) of the 256-bit random token.
CREATE TABLE api_tokens (
    token_id   text PRIMARY KEY,
    principal  text NOT NULL REFERENCES principals (name) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,
    label      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX api_tokens_principal_idx ON api_tokens (principal);

-- One live credential per device at most; rotation replaces it, revocation marks it.
CREATE TABLE device_credentials (
    device_id   text PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    broker_hash text NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Every change to identities and the registry made by a person or a tool, and who made it.
CREATE TABLE admin_audit (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    subject text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX admin_audit_subject_idx ON admin_audit (subject, at);

-- The device time of the status message last applied: the newest status wins, whatever order
-- the ingestors of a shared subscription apply them in.
ALTER TABLE devices ADD COLUMN status_at timestamptz;

-- Presence (connection, last_seen, status_at) changes all the time and means nothing to
-- ingest's registry snapshot: only the columns the snapshot reads bump the version, so
-- presence updates do not make every ingestor reload the registry.
DROP TRIGGER devices_changed ON devices;
CREATE TRIGGER devices_changed
    AFTER INSERT OR DELETE OR UPDATE OF device_id, device_type, service, district, medium, lifecycle
    ON devices FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();

-- Wakes `silobreak broker-sync --watch`, which rewrites the broker's password and ACL files.
CREATE FUNCTION notify_broker_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('silobreak_broker_auth', '');
    RETURN NULL;
END $$;
CREATE TRIGGER device_credentials_changed AFTER INSERT OR UPDATE OR DELETE ON device_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION notify_broker_auth();
CREATE TRIGGER principals_changed AFTER INSERT OR UPDATE OR DELETE ON principals
    FOR EACH STATEMENT EXECUTE FUNCTION notify_broker_auth();

-- Bumped by every change to device credentials and principals, as registry_version is by the
-- registry: `silobreak broker-sync --watch` rewrites the broker's files only when one of the
-- two moved. Its notifications are hints (any database login can send them), the versions are
-- not (only the platform writes these tables).
CREATE TABLE IF NOT EXISTS broker_auth_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO broker_auth_version VALUES (true, 1) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION notify_broker_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE broker_auth_version SET version = version + 1;
    PERFORM pg_notify('silobreak_broker_auth', '');
    RETURN NULL;
END $$;

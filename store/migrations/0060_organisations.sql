-- Organisations above services: several municipalities, a metropolitan authority, regional
-- syndicates and utilities on one platform, each isolated by default (docs/organisations.md).
--
-- Every service, team and coordinator belongs to one organisation; a device, grant,
-- subscription and audit row belongs to the organisation of its service or principal, recorded
-- on the row when it is written. Components (the platform's own processes) belong to none.
-- A database from before organisations migrates into one organisation, `city`: no principal,
-- device, grant or subscription is renamed, and every grant keeps working.

CREATE TABLE organisations (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    kind         text NOT NULL CHECK (kind IN ('municipality', 'metropolis', 'syndicate',
                                               'federation', 'utility', 'region')),
    display_name text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO organisations (name, kind, display_name) VALUES ('city', 'municipality', 'The city');

-- The service a device's readings are tagged with, and the organisation it belongs to.
-- A service name is unique on the platform, as a device id is.
CREATE TABLE services (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]*$'),
    organisation text NOT NULL REFERENCES organisations (name),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX services_organisation_idx ON services (organisation);
INSERT INTO services (name, organisation)
SELECT DISTINCT s, 'city' FROM (
    SELECT service FROM devices
    UNION SELECT service FROM device_ownership
    UNION SELECT name FROM principals WHERE kind = 'service'
    UNION SELECT owner FROM grants
) AS known (s)
WHERE s ~ '^[a-z][a-z0-9_-]*$';

ALTER TABLE principals ADD COLUMN organisation text REFERENCES organisations (name);
UPDATE principals SET organisation = 'city' WHERE kind <> 'component';
ALTER TABLE principals ADD CONSTRAINT principals_organisation_check
    CHECK ((kind = 'component') = (organisation IS NULL));
CREATE INDEX principals_organisation_idx ON principals (organisation, kind);

-- The organisation of a service, or NULL when the name is no service's.
CREATE FUNCTION silobreak_service_org(svc text) RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT organisation FROM services WHERE name = svc $$;

-- The organisation of a principal (for a service principal, its service's).
CREATE FUNCTION silobreak_principal_org(who text) RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT organisation FROM principals WHERE name = who $$;

-- The organisation when the platform has only one (a single-city installation), else NULL.
CREATE FUNCTION silobreak_sole_org() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT min(name) FROM organisations HAVING count(*) = 1
$$;

-- A principal created without an organisation on a single-organisation platform joins it
-- (as before organisations, one city); with several, it names one or is refused.
CREATE FUNCTION silobreak_principal_default_org() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.organisation IS NULL AND NEW.kind <> 'component' THEN
        NEW.organisation := silobreak_sole_org();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER principals_default_org BEFORE INSERT ON principals
    FOR EACH ROW EXECUTE FUNCTION silobreak_principal_default_org();

-- A device names its service; a service the registry has not seen joins the only
-- organisation when there is one, and is refused when there are several (the importer
-- names the organisation: `silobreak devices import --org`).
CREATE FUNCTION silobreak_device_service() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM services WHERE name = NEW.service) THEN
        IF (SELECT count(*) FROM organisations) = 1 THEN
            INSERT INTO services (name, organisation)
            SELECT NEW.service, name FROM organisations ON CONFLICT (name) DO NOTHING;
        ELSE
            RAISE EXCEPTION 'service % belongs to no organisation', NEW.service
                USING ERRCODE = 'foreign_key_violation',
                      HINT = 'register it with its organisation first';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER devices_service_org BEFORE INSERT OR UPDATE OF service ON devices
    FOR EACH ROW EXECUTE FUNCTION silobreak_device_service();

-- Grants: the two organisations, fixed when the grant is made, and the terms of a contract.
ALTER TABLE grants
    ADD COLUMN owner_org text REFERENCES organisations (name),
    ADD COLUMN consumer_org text REFERENCES organisations (name),
    -- Obligations the consumer accepts: {"delete_after_days": n, "attribution": "..."}.
    ADD COLUMN obligations jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Across organisations, a grant takes effect once the owning organisation's coordinator
    -- has approved it and the consumer's coordinator has accepted its terms.
    ADD COLUMN owner_approved_by text,
    ADD COLUMN owner_approved_at timestamptz,
    ADD COLUMN consumer_accepted_by text,
    ADD COLUMN consumer_accepted_at timestamptz;
UPDATE grants SET owner_org = silobreak_service_org(owner),
                  consumer_org = silobreak_principal_org(consumer);
UPDATE grants SET owner_org = 'city' WHERE owner_org IS NULL;
UPDATE grants SET consumer_org = 'city' WHERE consumer_org IS NULL;
ALTER TABLE grants ALTER COLUMN owner_org SET NOT NULL, ALTER COLUMN consumer_org SET NOT NULL;
ALTER TABLE grants ADD CONSTRAINT grants_contract_check CHECK (
    status <> 'active' OR owner_org = consumer_org
    OR (owner_approved_at IS NOT NULL AND consumer_accepted_at IS NOT NULL));
CREATE INDEX grants_owner_org_idx ON grants (owner_org, status);
CREATE INDEX grants_consumer_org_idx ON grants (consumer_org, status);

CREATE FUNCTION silobreak_grant_orgs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.owner_org := coalesce(NEW.owner_org, silobreak_service_org(NEW.owner),
                              silobreak_sole_org());
    NEW.consumer_org := coalesce(NEW.consumer_org, silobreak_principal_org(NEW.consumer),
                                 silobreak_sole_org());
    RETURN NEW;
END $$;
CREATE TRIGGER grants_orgs BEFORE INSERT ON grants
    FOR EACH ROW EXECUTE FUNCTION silobreak_grant_orgs();

-- Subscriptions and the access audit carry the organisations they belong to.
ALTER TABLE subscriptions ADD COLUMN consumer_org text REFERENCES organisations (name);
UPDATE subscriptions s SET consumer_org = coalesce(silobreak_principal_org(s.consumer), 'city');
ALTER TABLE subscriptions ALTER COLUMN consumer_org SET NOT NULL;

CREATE FUNCTION silobreak_subscription_org() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.consumer_org := coalesce(NEW.consumer_org, silobreak_principal_org(NEW.consumer),
                                 silobreak_sole_org());
    RETURN NEW;
END $$;
CREATE TRIGGER subscriptions_org BEFORE INSERT ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION silobreak_subscription_org();

ALTER TABLE audit_log ADD COLUMN owner_org text, ADD COLUMN consumer_org text;
UPDATE audit_log SET owner_org = silobreak_service_org(owner),
                     consumer_org = silobreak_principal_org(consumer);
CREATE INDEX audit_log_owner_org_idx ON audit_log (owner_org, id);
CREATE INDEX audit_log_consumer_org_idx ON audit_log (consumer_org, id);

-- A grant's organisations are on record; other events look the names up once, here.
CREATE FUNCTION silobreak_audit_orgs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.grant_id IS NOT NULL AND (NEW.owner_org IS NULL OR NEW.consumer_org IS NULL) THEN
        SELECT g.owner_org, g.consumer_org INTO NEW.owner_org, NEW.consumer_org
        FROM grants g WHERE g.id = NEW.grant_id;
    END IF;
    NEW.owner_org := coalesce(NEW.owner_org, silobreak_service_org(NEW.owner));
    NEW.consumer_org := coalesce(NEW.consumer_org, silobreak_principal_org(NEW.consumer));
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_orgs BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION silobreak_audit_orgs();

-- What an organisation lets other organisations discover of its streams, and on what terms.
-- Streams not offered here stay invisible outside their organisation.
CREATE TABLE stream_offers (
    id          bigserial PRIMARY KEY,
    service     text NOT NULL REFERENCES services (name),
    device_type text NOT NULL,
    -- Empty: every metric of the device type.
    metrics     text[] NOT NULL DEFAULT '{}',
    -- NULL: every district the service's devices are in.
    districts   text[],
    -- What the owner offers: granularity, interval, pool, minimum pool, obligations.
    terms       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    withdrawn_at timestamptz,
    UNIQUE (service, device_type)
);

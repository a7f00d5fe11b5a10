-- Retention per owning service (docs/store.md, "Retention").
--
-- A service's readings older than `keep`, and its aggregates older than `keep_aggregates`,
-- are removed by silobreak_retention(): a TimescaleDB job on that backend, part of
-- `silobreak maintain` on plain PostgreSQL. It works on whole partitions (chunks): one whose
-- time range has passed the cutoff of every service with rows in it is dropped; otherwise the
-- expired services' rows are deleted from it, once (retention_applied remembers), so the
-- other services' rows stay. A service with no policy keeps its data.

CREATE TABLE retention_policies (
    service         text PRIMARY KEY,
    keep            interval NOT NULL CHECK (keep > INTERVAL '0'),
    keep_aggregates interval NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (keep_aggregates >= keep)
);

-- What retention works on: the raw tables and the aggregates' stores, by backend (0012).
CREATE TABLE retention_targets (
    relation    text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('raw', 'aggregate')),
    time_column text NOT NULL
);

-- Services whose rows were deleted from a partition that other services' rows keep alive.
CREATE TABLE retention_applied (
    part       oid NOT NULL,
    service    text NOT NULL,
    part_name  text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (part, service)
);

-- What retention removed, for `silobreak retention status` and the record.
CREATE TABLE retention_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    relation  text NOT NULL,
    part_name text NOT NULL,
    action    text NOT NULL CHECK (action IN ('drop', 'delete')),
    services  text[] NOT NULL,
    rows      bigint
);

-- The signature TimescaleDB's add_job() wants; both arguments are unused.
CREATE PROCEDURE silobreak_retention(job_id integer DEFAULT NULL, config jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    p record;
    expired text[];
    fresh text[];
    kept boolean;
    removed bigint;
    oldest interval;
BEGIN
    -- Partitions dropped by other means leave nothing to remember.
    DELETE FROM retention_applied a WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = a.part);
    FOR t IN SELECT * FROM retention_targets ORDER BY relation LOOP
        SELECT min(CASE t.kind WHEN 'raw' THEN keep ELSE keep_aggregates END)
        INTO oldest FROM retention_policies;
        CONTINUE WHEN oldest IS NULL;
        FOR p IN SELECT * FROM silobreak_time_parts(t.relation, now() - oldest) LOOP
            SELECT array_agg(service ORDER BY service) INTO expired FROM retention_policies
            WHERE p.hi <= now() - CASE t.kind WHEN 'raw' THEN keep ELSE keep_aggregates END;
            CONTINUE WHEN expired IS NULL;
            SELECT array_agg(e ORDER BY e) INTO fresh FROM unnest(expired) AS e
            WHERE NOT EXISTS (
                SELECT 1 FROM retention_applied a WHERE a.part = p.part AND a.service = e);
            CONTINUE WHEN fresh IS NULL;
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I >= $1 AND %I < $2'
                           ' AND service <> ALL($3))', p.store, t.time_column, t.time_column)
            INTO kept USING p.lo, p.hi, expired;
            IF NOT kept THEN
                PERFORM silobreak_drop_part(t.relation, p.part, p.lo, p.hi);
                DELETE FROM retention_applied WHERE part = p.part;
                INSERT INTO retention_log (relation, part_name, action, services)
                VALUES (t.relation, p.part_name, 'drop', expired);
            ELSE
                EXECUTE format('DELETE FROM %s WHERE %I >= $1 AND %I < $2 AND service = ANY($3)',
                               p.store, t.time_column, t.time_column)
                USING p.lo, p.hi, fresh;
                GET DIAGNOSTICS removed = ROW_COUNT;
                INSERT INTO retention_applied (part, service, part_name)
                SELECT p.part, s, p.part_name FROM unnest(fresh) AS s;
                INSERT INTO retention_log (relation, part_name, action, services, rows)
                VALUES (t.relation, p.part_name, 'delete', fresh, removed);
            END IF;
        END LOOP;
    END LOOP;
END $$;

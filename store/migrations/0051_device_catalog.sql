-- The device catalog the store was migrated for (docs/store.md, "Device types as data"):
-- `silobreak migrate` records it, and every platform process reads it at start-up so that
-- ingest, the streams API and the store agree on the types and their metrics.
CREATE TABLE device_catalog (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    version    integer NOT NULL,
    document   jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

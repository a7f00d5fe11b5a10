-- Streams: grants (and the requests that precede them), subscriptions with their cursors,
-- webhook deliveries, and the audit of every access to shared data.

-- What one consumer may read of one owning service's data, at what granularity, why, until when.
-- A request is a grant row in status 'requested' until the owner approves or refuses it.
CREATE TABLE grants (
    id           bigserial PRIMARY KEY,
    owner        text NOT NULL,
    consumer     text NOT NULL,
    device_types text[] NOT NULL CHECK (cardinality(device_types) > 0),
    -- Empty: every metric of the granted device types.
    metrics      text[] NOT NULL DEFAULT '{}',
    -- NULL: every district; otherwise only devices registered in one of these.
    districts    text[],
    -- [min_lon, min_lat, max_lon, max_lat]; NULL: anywhere.
    bbox         float8[] CHECK (bbox IS NULL OR cardinality(bbox) = 4),
    granularity  text NOT NULL CHECK (granularity IN ('raw', 'aggregate')),
    interval_s   integer CHECK (interval_s IS NULL OR interval_s > 0),
    pool         text CHECK (pool IS NULL OR pool IN ('device', 'district')),
    min_devices  integer CHECK (min_devices IS NULL OR min_devices > 0),
    purpose      text NOT NULL CHECK (length(btrim(purpose)) > 0),
    expires_at   timestamptz NOT NULL,
    status       text NOT NULL
                 CHECK (status IN ('requested', 'active', 'refused', 'revoked', 'expired')),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    decided_by   text,
    decided_at   timestamptz,
    -- Why a request was refused or a grant revoked.
    note         text NOT NULL DEFAULT '',
    CHECK (granularity = 'raw' OR (interval_s IS NOT NULL AND pool IS NOT NULL))
);
CREATE INDEX grants_consumer_idx ON grants (consumer, status);
CREATE INDEX grants_owner_idx ON grants (owner, status);

-- A consumer's live feed under one grant. `cursor` is the last acknowledged position
-- (see streams/cursor.py): a pg_snapshot for raw feeds, a bucket watermark for aggregates.
CREATE TABLE subscriptions (
    id           text PRIMARY KEY,
    consumer     text NOT NULL,
    grant_id     bigint NOT NULL REFERENCES grants (id),
    device_types text[] NOT NULL,
    metrics      text[] NOT NULL,
    districts    text[],
    delivery     text NOT NULL CHECK (delivery IN ('sse', 'webhook', 'mqtt')),
    webhook_url  text,
    -- The HMAC-SHA256 key of webhook signatures (shown to the consumer once, at creation).
    secret       text,
    cursor       text NOT NULL,
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stopped', 'deleted')),
    note         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (delivery <> 'webhook' OR (webhook_url IS NOT NULL AND secret IS NOT NULL))
);
CREATE INDEX subscriptions_consumer_idx ON subscriptions (consumer, status);
CREATE INDEX subscriptions_grant_idx ON subscriptions (grant_id);

-- One row per webhook batch, written before the first attempt: a gateway that restarts
-- sends a pending batch again with the same idempotency key, so the receiver sees it once.
CREATE TABLE webhook_deliveries (
    subscription_id text NOT NULL REFERENCES subscriptions (id),
    seq             bigint NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    cursor_to       text NOT NULL,
    readings        integer NOT NULL,
    body            bytea,
    attempts        integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'abandoned')),
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    PRIMARY KEY (subscription_id, seq)
);

-- Every grant decision, subscription, history read and delivery batch: who, what, when,
-- how many readings. Read by the owning service and the coordinator.
CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    action          text NOT NULL,
    owner           text,
    consumer        text,
    grant_id        bigint,
    subscription_id text,
    readings        bigint NOT NULL DEFAULT 0,
    detail          jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_owner_idx ON audit_log (owner, id);
CREATE INDEX audit_log_grant_idx ON audit_log (grant_id, id);

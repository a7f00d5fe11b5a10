-- Where each InfluxDB mirror is in the store's commit order (store/mirror.py): the rows
-- committed after `cursor` (a pg_snapshot; see streams/cursor.py for the scheme) are still to
-- be sent. It moves only after the mirror's server has acknowledged a write, so an outage
-- loses nothing: the mirror resumes from here.
CREATE TABLE mirror_state (
    name       text PRIMARY KEY,
    cursor     pg_snapshot NOT NULL,
    sent       bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_error text NOT NULL DEFAULT ''
);

-- One read path (store/query.py): the aggregate-level rule every reader calls, the history of
-- where each device stood, and the ledger of released pooled buckets.

-- The stored level a bucketed read uses: the coarsest aggregate ('1h', '1m') whose width tiles
-- `step` and whose buckets tile [start, end), else 'raw'. Buckets are aligned to 2000-01-03
-- (a Monday: TimescaleDB's time_bucket origin, which the plain rollups copy). A NULL range
-- means "widened to whole steps by the caller", as Grafana's panels group their range.
-- The query builder and the Grafana panels both call it; IMMUTABLE, so the planner folds it
-- for constant arguments and prunes the branches it rules out before they read anything.
CREATE FUNCTION silobreak_agg_level(
    step interval, start timestamptz DEFAULT NULL, "end" timestamptz DEFAULT NULL
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce((
        SELECT l.name
        FROM (VALUES ('1h', 3600::numeric, 1), ('1m', 60::numeric, 2)) AS l(name, width, rank)
        WHERE extract(epoch FROM step) >= l.width
          AND extract(epoch FROM step) % l.width = 0
          AND (start IS NULL
               OR extract(epoch FROM start - TIMESTAMPTZ '2000-01-03 00:00:00+00') % l.width = 0)
          AND ("end" IS NULL
               OR extract(epoch FROM "end" - TIMESTAMPTZ '2000-01-03 00:00:00+00') % l.width = 0)
        ORDER BY l.rank LIMIT 1), 'raw')
$$;

-- Where each device stood and from when: pooled buckets are keyed by the district a device was
-- in (at the bucket's start), not where it stands today.
CREATE TABLE device_districts (
    device_id text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    valid     tstzrange NOT NULL,
    district  text,
    PRIMARY KEY (device_id, valid)
);
INSERT INTO device_districts (device_id, valid, district)
SELECT device_id, tstzrange('-infinity', NULL), district FROM devices;

CREATE FUNCTION silobreak_track_district() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO device_districts VALUES (NEW.device_id, tstzrange('-infinity', NULL), NEW.district);
    ELSIF NEW.district IS DISTINCT FROM OLD.district THEN
        UPDATE device_districts SET valid = tstzrange(lower(valid), now())
        WHERE device_id = NEW.device_id AND upper_inf(valid) AND lower(valid) < now();
        DELETE FROM device_districts
        WHERE device_id = NEW.device_id AND upper_inf(valid) AND lower(valid) >= now();
        INSERT INTO device_districts VALUES (NEW.device_id, tstzrange(now(), NULL), NEW.district);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_district_history AFTER INSERT OR UPDATE OF district ON devices
    FOR EACH ROW EXECUTE FUNCTION silobreak_track_district();

-- Released pooled buckets: sum, count and device count of one metric over one district's
-- devices of one owner and type, for one bucket width. A bucket is released once, after its
-- seal (bucket end plus the grace period), and never changes after: re-reading it cannot
-- isolate a reading that arrived later (docs/streams.md, "Pooled data"). No min, max or last
-- is kept: each is one device's own reading.
CREATE TABLE pooled_buckets (
    device_type text NOT NULL,
    width       interval NOT NULL,
    bucket      timestamptz NOT NULL,
    service     text NOT NULL,
    district    text NOT NULL,  -- '' for devices without one
    metric      text NOT NULL,
    sum         double precision NOT NULL,
    count       bigint NOT NULL,
    devices     integer NOT NULL,
    -- A sound level: `sum` is of 10^(L/10) and the mean is 10·log10(sum / count).
    energy      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (device_type, width, service, bucket, district, metric)
);
-- Which buckets of a type and width are released (for every owner and district at once).
CREATE TABLE pooled_released (
    device_type text NOT NULL,
    width       interval NOT NULL,
    bucket      timestamptz NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_type, width, bucket)
);

-- Governed SQL reads pooled data from the ledger too: the per-type district views showed each
-- pool's min and max, one household's own reading.
{{drop_district_views}}

-- For the current role: the released hourly pools its live district-pooled grants cover, over
-- at least the pool minimum of devices and of readings.
CREATE VIEW governed.pooled_1h WITH (security_barrier) AS
SELECT DISTINCT p.bucket, p.device_type, p.service, p.district, p.metric, p.sum,
       CASE WHEN p.energy THEN 10 * log10(p.sum / p.count) ELSE p.sum / p.count END AS avg,
       p.count, p.devices
FROM pooled_buckets p
JOIN (SELECT g.owner, t AS device_type, g.districts, g.metrics,
             greatest(coalesce(g.min_devices, 0), coalesce(
                 (SELECT value::integer FROM store_settings WHERE key = 'streams_min_pool'), 5))
                 AS min_devices
      FROM sql_viewer v
      JOIN grants g ON g.consumer = v.principal
      CROSS JOIN LATERAL unnest(g.device_types) AS t
      WHERE g.status = 'active' AND g.expires_at > now()
        AND g.granularity = 'aggregate' AND g.pool = 'district' AND g.interval_s = 3600
        AND g.bbox IS NULL) x
  ON x.owner = p.service AND x.device_type = p.device_type
WHERE p.width = INTERVAL '1 hour'
  AND (x.districts IS NULL OR p.district = ANY (x.districts))
  AND (cardinality(x.metrics) = 0 OR p.metric = ANY (x.metrics))
  AND p.devices >= x.min_devices AND p.count >= x.min_devices;

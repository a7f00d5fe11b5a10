-- Regional pooling: aggregates pooled across several organisations' grants in one read
-- (docs/organisations.md). A regional body holding district-pooled grants from several
-- municipalities reads, per bucket and metric:
--   * district pools: every covered owner's devices in one district; a district whose devices
--     belong to owners of several organisations (an inter-communal one) is one pool, labelled
--     with all of them, under the strictest of their pool minimums;
--   * organisation totals: one municipality's covered devices;
--   * the regional total: every covered device.
-- A pool is released when it has at least its minimum of devices and of readings. A total
-- (an organisation's, the region's) is released only when, besides, the district pools it
-- contains that were suppressed hold together none or at least the total's minimum of its
-- devices and readings: subtracting the released districts from a total never isolates a
-- suppressed one. The minimum of a total is the strictest of the owners in it.
-- Everything comes from the ledger of released buckets (pooled_buckets, 0050), as every
-- pooled read does. The API (streams/routes_regional.py) and governed SQL call this one
-- function; governed roles reach it only through governed.regional_pools below.

CREATE FUNCTION silobreak_regional_pools(
    q_who text, q_type text, q_width interval, q_t0 timestamptz, q_t1 timestamptz,
    q_min_pool integer
) RETURNS TABLE (
    bucket timestamptz, level text, organisations text[], district text, metric text,
    sum double precision, avg double precision, count bigint, devices bigint
) LANGUAGE sql STABLE AS $$
WITH g AS (
    SELECT g.owner, s.organisation AS org, g.districts, g.metrics,
           greatest(coalesce(g.min_devices, 0), q_min_pool) AS min_n
    FROM grants g JOIN services s ON s.name = g.owner
    WHERE g.consumer = q_who AND g.status = 'active' AND g.expires_at > now()
      AND g.granularity = 'aggregate' AND g.pool = 'district' AND g.bbox IS NULL
      AND q_type = ANY (g.device_types) AND make_interval(secs => g.interval_s) = q_width
),
-- Each owner's released pools the grants cover: one row per pool, under the strictest of
-- the grants that cover it.
p AS MATERIALIZED (
    SELECT p.bucket, g.org, p.service, p.district, p.metric, p.sum, p.count, p.devices,
           p.energy, max(g.min_n) AS min_n
    FROM pooled_buckets p
    JOIN g ON g.owner = p.service
          AND (g.districts IS NULL OR p.district = ANY (g.districts))
          AND (cardinality(g.metrics) = 0 OR p.metric = ANY (g.metrics))
    WHERE p.device_type = q_type AND p.width = q_width AND p.bucket >= q_t0 AND p.bucket < q_t1
    GROUP BY p.bucket, g.org, p.service, p.district, p.metric, p.sum, p.count, p.devices,
             p.energy
),
d AS MATERIALIZED (
    SELECT p.bucket, p.district, p.metric, array_agg(DISTINCT p.org ORDER BY p.org) AS orgs,
           sum(p.sum) AS s, sum(p.count)::bigint AS c, sum(p.devices)::bigint AS n,
           max(p.min_n) AS min_n, bool_or(p.energy) AS e
    FROM p
    GROUP BY p.bucket, p.district, p.metric
),
dr AS MATERIALIZED (
    SELECT d.*, d.n >= d.min_n AND d.c >= d.min_n AS released FROM d
),
-- Each covered pool with whether its district pool was released.
pr AS (
    SELECT p.*, dr.released FROM p JOIN dr USING (bucket, district, metric)
),
totals AS (
    SELECT 'organisation' AS level, pr.bucket, ARRAY[pr.org] AS orgs, pr.metric,
           sum(pr.sum) AS s, sum(pr.count)::bigint AS c, sum(pr.devices)::bigint AS n,
           max(pr.min_n) AS min_n, bool_or(pr.energy) AS e,
           coalesce(sum(pr.devices) FILTER (WHERE NOT pr.released), 0) AS hidden_n,
           coalesce(sum(pr.count) FILTER (WHERE NOT pr.released), 0) AS hidden_c
    FROM pr
    GROUP BY pr.bucket, pr.org, pr.metric
    UNION ALL
    SELECT 'region', pr.bucket, array_agg(DISTINCT pr.org ORDER BY pr.org), pr.metric,
           sum(pr.sum), sum(pr.count)::bigint, sum(pr.devices)::bigint, max(pr.min_n),
           bool_or(pr.energy),
           coalesce(sum(pr.devices) FILTER (WHERE NOT pr.released), 0),
           coalesce(sum(pr.count) FILTER (WHERE NOT pr.released), 0)
    FROM pr
    GROUP BY pr.bucket, pr.metric
)
SELECT dr.bucket, 'district', dr.orgs, dr.district, dr.metric, dr.s,
       CASE WHEN dr.e THEN 10 * log10(dr.s / dr.c) ELSE dr.s / dr.c END, dr.c, dr.n
FROM dr WHERE dr.released
UNION ALL
SELECT t.bucket, t.level, t.orgs, NULL, t.metric, t.s,
       CASE WHEN t.e THEN 10 * log10(t.s / t.c) ELSE t.s / t.c END, t.c, t.n
FROM totals t
WHERE t.n >= t.min_n AND t.c >= t.min_n
  AND (t.hidden_n = 0 OR (t.hidden_n >= t.min_n AND t.hidden_c >= t.min_n))
$$;
-- Not for governed roles directly: they could name another principal.
REVOKE ALL ON FUNCTION silobreak_regional_pools(text, text, interval, timestamptz, timestamptz,
                                                integer) FROM PUBLIC;

-- Governed SQL: the regional pools of the role that logged in (its principal, from
-- sql_viewers), under the platform's pool minimum. SECURITY DEFINER, so it reads the ledger
-- and the grants for the viewer; the viewer is the session's login role, never an argument.
-- Its search_path is pinned below to the schema the store lives in (then pg_temp, last), so
-- no object a viewer could create shadows what it reads.
CREATE FUNCTION governed.regional_pools(
    dtype text, width interval, t0 timestamptz, t1 timestamptz
) RETURNS TABLE (
    bucket timestamptz, level text, organisations text[], district text, metric text,
    sum double precision, avg double precision, count bigint, devices bigint
) LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT * FROM silobreak_regional_pools(
        (SELECT principal FROM sql_viewers WHERE role = session_user), dtype, width, t0, t1,
        coalesce((SELECT value::integer FROM store_settings WHERE key = 'streams_min_pool'), 5))
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION governed.regional_pools(text, interval, timestamptz,'
                   ' timestamptz) SET search_path = %I, pg_temp', current_schema());
END $$;

-- Data flows: for one organisation, who read what from whom, under which grant and purpose,
-- how many readings per time step, in and out (docs/organisations.md). Taken from the access
-- audit (history pages and delivery batches), so it shows what was read, not what was
-- granted. The API (/v1/flows) and governed SQL (a coordinator's Grafana panel) call this one
-- function; governed roles reach it only through governed.data_flows below.

CREATE FUNCTION silobreak_flows(
    q_org text, q_t0 timestamptz, q_t1 timestamptz, q_step interval
) RETURNS TABLE (
    "time" timestamptz, direction text, grant_id bigint, owner text, owner_org text,
    consumer text, consumer_org text, purpose text, granularity text, grant_status text,
    readings bigint, requests bigint
) LANGUAGE sql STABLE AS $$
    SELECT date_bin(q_step, a.at, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
           CASE WHEN g.owner_org = g.consumer_org THEN 'internal'
                WHEN g.owner_org = q_org THEN 'out' ELSE 'in' END,
           g.id, g.owner, g.owner_org, g.consumer, g.consumer_org, g.purpose, g.granularity,
           g.status, sum(a.readings)::bigint, count(*)::bigint
    FROM audit_log a JOIN grants g ON g.id = a.grant_id
    WHERE a.action IN ('history.read', 'delivery.batch')
      AND a.at >= q_t0 AND a.at < q_t1
      AND q_org IN (a.owner_org, a.consumer_org)
    GROUP BY 1, g.id
$$;
REVOKE ALL ON FUNCTION silobreak_flows(text, timestamptz, timestamptz, interval) FROM PUBLIC;

-- Governed SQL: the flows of the organisation whose coordinator logged in (from
-- sql_viewers); any other role gets none. The login role decides, never an argument. Its
-- search_path is pinned below to the store's schema, then pg_temp (as regional_pools').
CREATE FUNCTION governed.data_flows(t0 timestamptz, t1 timestamptz, step interval)
RETURNS TABLE (
    "time" timestamptz, direction text, grant_id bigint, owner text, owner_org text,
    consumer text, consumer_org text, purpose text, granularity text, grant_status text,
    readings bigint, requests bigint
) LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT * FROM silobreak_flows(
        (SELECT p.organisation FROM sql_viewers v JOIN principals p ON p.name = v.principal
         WHERE v.role = session_user AND p.kind = 'coordinator' AND p.disabled_at IS NULL),
        t0, t1, step)
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION governed.data_flows(timestamptz, timestamptz, interval)'
                   ' SET search_path = %I, pg_temp', current_schema());
END $$;

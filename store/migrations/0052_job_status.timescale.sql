-- What TimescaleDB's job scheduler last made of the store's jobs (refresh policies,
-- compression, silobreak_retention), for `silobreak maintain` and the platform dashboard.
--
-- The platform does not depend on the scheduler: the upkeep of `silobreak up` and
-- `silobreak maintain` runs every job itself with `CALL run_job` (docs/store.md, "Upkeep").
-- On PostgreSQL 15.20 and later every run by the scheduler ends `Failed` ("cannot drop
-- portal "" while it is being set up", TimescaleDB 2.28 and 2.29) after its work has
-- committed, so a failure here is reported, not acted on.
--
-- SECURITY DEFINER: timescaledb_information's job views show a job only to its owner's
-- roles, and the platform's read-only role (store/sql_roles.py) owns none.
CREATE FUNCTION silobreak_job_status()
RETURNS TABLE (
    job_id              integer,
    job                 text,
    last_run_status     text,
    last_run_started_at timestamptz,
    total_failures      bigint,
    last_error          text,
    last_error_at       timestamptz
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT j.job_id,
           CASE j.proc_name
               WHEN 'policy_refresh_continuous_aggregate' THEN 'refresh ' || j.hypertable_name
               WHEN 'policy_compression' THEN 'compression ' || j.hypertable_name
               ELSE j.proc_name::text
           END,
           s.last_run_status::text, s.last_run_started_at, s.total_failures,
           e.err_message::text, e.finish_time
    FROM timescaledb_information.jobs j
    LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
    LEFT JOIN LATERAL (
        SELECT x.err_message, x.finish_time FROM timescaledb_information.job_errors x
        WHERE x.job_id = j.job_id ORDER BY x.start_time DESC LIMIT 1
    ) e ON true
    -- The store's jobs: its policies and its own procedures, not TimescaleDB's housekeeping.
    WHERE j.hypertable_name IS NOT NULL OR j.proc_schema <> '_timescaledb_functions'
$$;

CREATE VIEW store_job_status AS SELECT * FROM silobreak_job_status();

-- What TimescaleDB's job scheduler last made of the store's jobs (the TimescaleDB variant of
-- this migration). The plain backend has no scheduler: `silobreak maintain` does its upkeep.
-- The view is empty, with the same columns, so `silobreak maintain` and the platform
-- dashboard read it on either backend.
CREATE VIEW store_job_status AS
SELECT NULL::integer AS job_id, NULL::text AS job, NULL::text AS last_run_status,
       NULL::timestamptz AS last_run_started_at, NULL::bigint AS total_failures,
       NULL::text AS last_error, NULL::timestamptz AS last_error_at
WHERE false;

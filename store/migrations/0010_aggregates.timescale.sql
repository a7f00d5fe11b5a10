-- Aggregates, compression and chunk sizes for the TimescaleDB backend (docs/store.md).
--
-- Per device type: a 1-minute continuous aggregate of the raw hypertable and a 1-hour one
-- built on it (hierarchical), both real-time (materialized_only = false: the part not yet
-- materialized is aggregated from raw rows at read time). Per metric they keep avg, min,
-- max, count, sum and last (the value at the latest reading time that has the metric);
-- `sum` makes 1-hour, coarser and pooled averages exact (sum / count). The plain backend's
-- rollup views (0010_aggregates.plain.sql) have the same names, columns and answers.
-- The per-type parts are generated from the device catalog by store/ddl (docs/store.md).

-- Chunk interval, from the expected rate (docs/store.md has the arithmetic): a scaled-up
-- city of ~30,000 devices writes ~700 MB a day (rows and primary key) into streetlights,
-- ~300 MB into traffic lights and ~230 MB into meters, so a day's chunk of each (and the
-- three together) stays well inside a quarter of a modest server's memory while it takes
-- inserts. Air sensors are ~1% of the fleet (~40 MB a day): a week per chunk keeps their
-- chunks (and compressed batches) from being tiny. The 1-minute aggregates have as many
-- rows as the raw table for devices that report once a minute or less often: the same
-- interval (TimescaleDB's default would be 10x). The 1-hour ones are 60x smaller: 30 days.
{{chunk_intervals}}

{{continuous_aggregates}}

-- Refresh policies. A refresh re-materializes only what was invalidated (inserted, merged or
-- deleted) inside its window, so a window of 8 days costs nothing where nothing changed and
-- picks up every late reading ingest accepts (7 days, SILOBREAK_INGEST_MAX_AGE). Backfills
-- older than that refresh their own range (store/bulk.py). The schedules bound the real-time
-- tail that reads aggregate from raw rows; buckets_per_batch => 0: one refresh per run (the
-- default makes one transaction per bucket).
{{refresh_policies}}

-- Compression. The table is wide: each metric is already its own compressed column, so
-- segmenting by device gives one compressed array per (device, metric) and chunk; `service`
-- is in the segment too (a device changes owner rarely, so it adds almost no segments) so
-- that per-service retention and grants filter whole batches. Newest first inside a batch:
-- "latest" and recent-range reads stop early. Chunks are compressed once they are older
-- than ingest's late window (8 days), so live inserts never land in compressed chunks.
-- The 1-minute aggregates are as many rows as the raw table for devices reporting once a
-- minute or less often: compressed too, after their refresh window (TimescaleDB requires it).
{{compression}}

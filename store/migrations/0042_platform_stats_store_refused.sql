-- The platform figures' column for the dead-letter reason of 0041: messages that decoded but
-- that the database refused for good when ingest wrote them (`store_refused`), per ingest
-- process and 10-second window like the other rejected_<reason> columns.
-- The default fills the rows recorded before, which had none to count, without rewriting
-- the table (PostgreSQL 11+ stores it once, in the catalog); it also lets a recorder of an
-- earlier release, which names only the five columns of 0030, go on inserting until it is
-- upgraded.
ALTER TABLE platform_stats ADD COLUMN rejected_store_refused bigint NOT NULL DEFAULT 0;

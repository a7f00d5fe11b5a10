-- Dead letters by arrival time: `silobreak rejects expire` deletes the oldest, and replay and
-- stats filter by `--since`. The (reason, received_at) and (device_id, received_at) indexes
-- serve only queries that name a reason or a device.
CREATE INDEX rejected_messages_received_idx ON rejected_messages (received_at);

-- A dead-letter reason for messages that decoded but that the database refused for good when
-- ingest wrote them (a constraint or trigger the decoder does not know of): `store_refused`.
-- The new check admits every row the old one did, so NOT VALID loses nothing and spares a
-- scan of the table under an exclusive lock; new rows are checked as before.
ALTER TABLE rejected_messages DROP CONSTRAINT rejected_messages_reason_check;
ALTER TABLE rejected_messages ADD CONSTRAINT rejected_messages_reason_check
    CHECK (reason IN ('payload_too_large', 'malformed_payload', 'unknown_device',
                      'schema_violation', 'timestamp_out_of_range', 'store_refused'))
    NOT VALID;

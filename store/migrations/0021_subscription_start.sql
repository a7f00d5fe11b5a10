-- Where each subscription started: the position every cursor it is handed must be at or after
-- (streams.cursor.belongs). A cursor the consumer sends back (`?cursor=`, `Last-Event-ID`, an
-- acknowledgement) is checked against it, so a forged `L1:1:` or `A0` cannot make one
-- unbounded read of the grant's whole history. Subscriptions made before this migration (and
-- rows inserted without it) start at their cursor as inserted.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS start_cursor text;
UPDATE subscriptions SET start_cursor = cursor WHERE start_cursor IS NULL;

CREATE OR REPLACE FUNCTION subscriptions_start_cursor() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.start_cursor := coalesce(NEW.start_cursor, NEW.cursor);
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS subscriptions_start_cursor ON subscriptions;
CREATE TRIGGER subscriptions_start_cursor BEFORE INSERT ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION subscriptions_start_cursor();
ALTER TABLE subscriptions ALTER COLUMN start_cursor SET NOT NULL;

-- imperium pg:// monitor: wake the emperors as soon as the vassals table changes.
--
-- Run once per database (psql -f docs/monitors/pg-notify.sql). The trigger
-- sends one NOTIFY on the channel given as its argument ('imperium', the
-- default of --emperor-pg-channel) after every INSERT, UPDATE, DELETE or
-- TRUNCATE statement on the table; every emperor listening on that channel
-- then runs its query at once. The payload (the table name) is informative
-- only: emperors always re-read their whole query.
--
-- For another table or channel, change the two names in the last statement.

CREATE OR REPLACE FUNCTION imperium_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], TG_TABLE_NAME);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS imperium_notify ON vassals;
CREATE TRIGGER imperium_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON vassals
    FOR EACH STATEMENT EXECUTE FUNCTION imperium_notify('imperium');

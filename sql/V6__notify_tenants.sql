-- Notifications name the tenants whose events a transaction committed, so a server wakes only
-- the long-polls that can see them: `<max sequence> <tenant>,<tenant>,...`. Tenant ids hold no
-- `,` or space. A list too long for a notification (8000 bytes) is left out: the sequence alone
-- wakes every waiter, as before.
CREATE OR REPLACE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    latest  bigint;
    tenants text;
BEGIN
    SELECT max(sequence), string_agg(DISTINCT tenant, ',') INTO latest, tenants FROM new_events;
    IF tenants IS NULL OR length(tenants) > 7000 THEN
        PERFORM pg_notify('artifactstore_events', latest::text);
    ELSE
        PERFORM pg_notify('artifactstore_events', latest::text || ' ' || tenants);
    END IF;
    RETURN NULL;
END $$;

-- The event log past one lock: writers commit their events unnumbered; a sequencer numbers
-- committed events afterwards (see src/events/sequencer.rs and docs/adr/0036).
--
-- - `position` (from a plain sequence, taken before the writer touches the views) is the key
--   the views keep (`created_position`); replay reads it from the event, so rebuilt views are
--   identical. It is unique, never reused, but neither gapless nor in commit order.
-- - `ticket` is taken by the INSERT of the events, after every statement of the writer's
--   transaction that changes a view (what follows it, a quota check, changes none). Two
--   writers whose view changes conflict wait on a row lock, so the one that waited takes its
--   ticket after the other committed: numbering committed events in ticket order puts
--   conflicting transactions in the order they really applied. Transactions that do not
--   conflict are numbered in ticket order, which need not be the order of their COMMITs.
-- - `sequence` is NULL until the sequencer numbers the event: it holds `event_counter`'s row
--   lock for that one short transaction, so sequence numbers stay gapless and become visible
--   in order (a reader only sees numbered events).

DROP TRIGGER events_no_update ON events;
DROP TRIGGER events_notify ON events;

CREATE SEQUENCE event_positions;
CREATE SEQUENCE event_tickets;
SELECT setval('event_positions', (SELECT COALESCE(max(sequence), 0) + 1 FROM events), false);
SELECT setval('event_tickets', (SELECT COALESCE(max(sequence), 0) + 1 FROM events), false);

ALTER TABLE events ADD COLUMN position bigint, ADD COLUMN ticket bigint;
UPDATE events SET position = sequence, ticket = sequence;
ALTER TABLE events
    ALTER COLUMN position SET NOT NULL,
    ALTER COLUMN ticket SET NOT NULL,
    ADD CONSTRAINT events_position_key UNIQUE (position);
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ALTER COLUMN sequence DROP NOT NULL;
ALTER TABLE events ADD CONSTRAINT events_sequence_key UNIQUE (sequence);
-- What the sequencer has still to number, in the order it numbers it.
CREATE INDEX events_unnumbered ON events (ticket, position) WHERE sequence IS NULL;

ALTER TABLE packages RENAME COLUMN created_sequence TO created_position;
ALTER TABLE files RENAME COLUMN created_sequence TO created_position;

-- Still append-only: the one change allowed is giving an unnumbered event its number.
CREATE FUNCTION events_numbered_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.sequence IS NULL AND NEW.sequence IS NOT NULL
       AND (NEW.position, NEW.ticket, NEW.id, NEW.type, NEW.tenant, NEW.subject_id,
            NEW.occurred_at, NEW.payload)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.ticket, OLD.id, OLD.type, OLD.tenant, OLD.subject_id,
            OLD.occurred_at, OLD.payload) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_numbered_only();

-- Listeners are woken when events are numbered (the payload as in V6), not when inserted; a
-- statement that numbered nothing wakes nobody.
CREATE OR REPLACE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    latest  bigint;
    tenants text;
BEGIN
    SELECT max(sequence), string_agg(DISTINCT tenant, ',') INTO latest, tenants FROM new_events;
    IF latest IS NULL THEN
        RETURN NULL;
    ELSIF tenants IS NULL OR length(tenants) > 7000 THEN
        PERFORM pg_notify('artifactstore_events', latest::text);
    ELSE
        PERFORM pg_notify('artifactstore_events', latest::text || ' ' || tenants);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER UPDATE ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Tenant usage in 64 slots per tenant (the slot from the package id), summed when read: a
-- tenant's writers otherwise all wait for one usage row, each until the previous one
-- committed, which is one global lock again for a tenant's writes. Same arithmetic as V9.
ALTER TABLE tenant_usage ADD COLUMN slot smallint NOT NULL DEFAULT 0;
ALTER TABLE tenant_usage DROP CONSTRAINT tenant_usage_pkey;
ALTER TABLE tenant_usage ADD PRIMARY KEY (tenant, slot);
ALTER TABLE tenant_usage ALTER COLUMN slot DROP DEFAULT;

CREATE OR REPLACE FUNCTION packages_usage_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, slot, logical_bytes, packages)
    SELECT tenant, hashtext(id::text) & 63, sum(total_size),
           count(*) FILTER (WHERE status <> 'expired')
    FROM new_rows
    GROUP BY 1, 2
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status <> 'expired') <> 0
    ORDER BY 1, 2
    ON CONFLICT (tenant, slot) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION packages_usage_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, slot, logical_bytes, packages)
    SELECT tenant, slot, sum(bytes), sum(counted)
    FROM (
        SELECT tenant, hashtext(id::text) & 63 AS slot, total_size AS bytes,
               (status <> 'expired')::int AS counted
        FROM new_rows
        UNION ALL
        SELECT tenant, hashtext(id::text) & 63, -total_size, -((status <> 'expired')::int)
        FROM old_rows
    ) AS change
    GROUP BY 1, 2
    HAVING sum(bytes) <> 0 OR sum(counted) <> 0
    ORDER BY 1, 2
    ON CONFLICT (tenant, slot) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION packages_usage_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, slot, logical_bytes, packages)
    SELECT tenant, hashtext(id::text) & 63, -sum(total_size),
           -count(*) FILTER (WHERE status <> 'expired')
    FROM old_rows
    GROUP BY 1, 2
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status <> 'expired') <> 0
    ORDER BY 1, 2
    ON CONFLICT (tenant, slot) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

-- Existing usage moves to the slots the triggers now use.
DELETE FROM tenant_usage;
INSERT INTO tenant_usage (tenant, slot, logical_bytes, packages)
SELECT tenant, hashtext(id::text) & 63, sum(total_size), count(*) FILTER (WHERE status <> 'expired')
FROM packages
GROUP BY 1, 2
HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status <> 'expired') <> 0;

-- The blob rows a writer's view changes take, taken first, in digest order, in one statement
-- (src/events/views/locks.rs): `FOR KEY SHARE` where a file or copy comes to name the blob (as
-- the foreign keys take it later; `FOR NO KEY UPDATE` if it is unreferenced, as clearing that
-- takes it later), `FOR UPDATE` where one may stop naming it (a replaced file,
-- an expired package's files, a collection). Writers then never wait for one another's blob
-- rows in opposite orders, and a question whether a blob is still referenced is asked only
-- once every writer adding a reference to it has committed.
CREATE FUNCTION lock_blobs(adding bytea[], releasing bytea[], releasing_files uuid[],
                           releasing_packages uuid[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    digest    bytea;
    exclusive boolean;
BEGIN
    FOR digest, exclusive IN
        SELECT b, bool_or(x) FROM (
            SELECT unnest(adding), false
            UNION ALL SELECT unnest(releasing), true
            UNION ALL SELECT blake3, true FROM files
                      WHERE id = ANY(releasing_files) OR package_id = ANY(releasing_packages)
        ) AS touched(b, x)
        GROUP BY b ORDER BY b
    LOOP
        IF exclusive THEN
            PERFORM 1 FROM blobs WHERE blake3 = digest FOR UPDATE;
        ELSE
            -- A referenced blob is only named again (its row keeps its values); an
            -- unreferenced one is made referenced (`unreferenced_since` cleared), which takes
            -- more: take that now rather than later, out of order.
            PERFORM 1 FROM blobs WHERE blake3 = digest AND unreferenced_since IS NULL
                FOR KEY SHARE;
            IF NOT FOUND THEN
                PERFORM 1 FROM blobs WHERE blake3 = digest FOR NO KEY UPDATE;
            END IF;
        END IF;
    END LOOP;
END $$;

-- Retention lifecycle: admin-defined classes, legal holds, class changes, expiry.
-- Expired packages keep their row (status `expired`) and their manifest (a tombstone record);
-- their files leave the views. All of it is derived from events and rebuilt by replay.

ALTER TABLE packages DROP CONSTRAINT packages_status_check;
ALTER TABLE packages ADD CONSTRAINT packages_status_check
    CHECK (status IN ('open', 'finalized', 'expired'));

ALTER TABLE retention_state
    ADD COLUMN hold_set_at  timestamptz,
    ADD COLUMN expired_at   timestamptz,
    ADD COLUMN expiry_reason text;

-- Workers find the next due package with this (held and already expired ones excluded).
CREATE INDEX retention_state_pending ON retention_state (expires_at)
    WHERE NOT legal_hold AND expired_at IS NULL AND expires_at IS NOT NULL;
-- Open packages that are never finalized expire from creation (plus a grace).
CREATE INDEX packages_open_created ON packages (created_at) WHERE status = 'open';

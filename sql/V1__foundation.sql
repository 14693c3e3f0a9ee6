-- artifact-store foundation schema.
-- The event log is the source of truth; every other table below the log is a view that
-- `artifactstore replay` can rebuild from it. Never edit this file once landed: add V2__...

CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (id) VALUES ('default');

-- Gapless, commit-ordered sequence numbers. A writer takes this row's lock with
-- UPDATE ... RETURNING as the last step of its transaction and holds it until COMMIT, so
-- numbers are handed out in commit order and a rollback returns its numbers unused.
CREATE TABLE event_counter (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_sequence  bigint NOT NULL
);
INSERT INTO event_counter VALUES (true, 0);

CREATE TABLE events (
    sequence     bigint PRIMARY KEY CHECK (sequence > 0),
    id           uuid NOT NULL UNIQUE,
    type         text NOT NULL,
    tenant       text NOT NULL REFERENCES tenants (id),
    subject_id   uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    payload      bytea NOT NULL           -- canonical CBOR
);
CREATE INDEX events_tenant_sequence ON events (tenant, sequence);
CREATE INDEX events_subject ON events (subject_id, sequence);

-- Wake listeners when events commit (delivered at COMMIT, never on rollback). The payload is the
-- highest sequence inserted; a notification is only a wake-up, the table is the truth.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('artifactstore_events', (SELECT max(sequence) FROM new_events)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Append-only: the log is never rewritten.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Configuration-like reference data (seeded; later defined through events).
CREATE TABLE retention_classes (
    name              text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    duration_seconds  bigint CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    description       text NOT NULL DEFAULT ''
);
INSERT INTO retention_classes (name, duration_seconds, description) VALUES
    ('ephemeral', 7 * 86400,         'scratch outputs, 7 days'),
    ('short',     30 * 86400,        'short-lived outputs, 30 days'),
    ('standard',  365 * 86400,       'ordinary build outputs, 1 year'),
    ('long',      7 * 365 * 86400,   'releases and evidence, 7 years'),
    ('permanent', NULL,              'kept forever');

CREATE TABLE metadata_schemas (
    tenant      text NOT NULL REFERENCES tenants (id),
    producer    text NOT NULL,
    schema      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, producer)
);

-- ---------------------------------------------------------------- views (rebuilt by replay)

CREATE TABLE packages (
    id               uuid PRIMARY KEY,
    tenant           text NOT NULL REFERENCES tenants (id),
    producer         text NOT NULL,
    subject          text NOT NULL,
    retention_class  text NOT NULL REFERENCES retention_classes (name),
    metadata         jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN ('open', 'finalized')),
    created_at       timestamptz NOT NULL,
    created_sequence bigint NOT NULL UNIQUE,
    finalized_at     timestamptz,
    manifest_digest  text,
    file_count       integer NOT NULL DEFAULT 0,
    total_size       bigint NOT NULL DEFAULT 0
);
CREATE INDEX packages_tenant_order ON packages (tenant, created_sequence DESC);
CREATE INDEX packages_tenant_producer ON packages (tenant, producer, created_sequence DESC);
CREATE INDEX packages_tenant_subject ON packages (tenant, subject, created_sequence DESC);
CREATE INDEX packages_metadata ON packages USING gin (metadata jsonb_path_ops);

-- Blobs are physical bytes shared by every tenant; who may see them is decided through
-- files (which carry a tenant), never through this table.
CREATE TABLE blobs (
    blake3      bytea PRIMARY KEY CHECK (length(blake3) = 32),
    sha256      bytea NOT NULL CHECK (length(sha256) = 32),
    size        bigint NOT NULL CHECK (size >= 0),
    created_at  timestamptz NOT NULL
);

CREATE TABLE storage_locations (
    blake3          bytea NOT NULL REFERENCES blobs (blake3),
    backend_id      text NOT NULL,
    key             text NOT NULL,
    status          text NOT NULL CHECK (status IN ('present', 'failed', 'missing', 'deleted')),
    stored_at       timestamptz NOT NULL,
    verified_at     timestamptz,
    retrieval_tier  text NOT NULL DEFAULT 'hot',
    restore_status  text,
    PRIMARY KEY (blake3, backend_id)
);

CREATE TABLE files (
    id                uuid PRIMARY KEY,
    tenant            text NOT NULL REFERENCES tenants (id),
    package_id        uuid NOT NULL REFERENCES packages (id),
    relative_path     text NOT NULL,
    size              bigint NOT NULL,
    media_type        text NOT NULL,
    blake3            bytea NOT NULL REFERENCES blobs (blake3),
    created_at        timestamptz NOT NULL,
    created_sequence  bigint NOT NULL,
    UNIQUE (package_id, relative_path)
);
CREATE INDEX files_tenant_blob ON files (tenant, blake3);
CREATE INDEX blobs_sha256 ON blobs (sha256);
CREATE INDEX files_blob ON files (blake3);

CREATE TABLE manifests (
    package_id  uuid PRIMARY KEY REFERENCES packages (id),
    tenant      text NOT NULL REFERENCES tenants (id),
    digest      text NOT NULL,
    cbor        bytea NOT NULL
);

CREATE TABLE retention_state (
    package_id   uuid PRIMARY KEY REFERENCES packages (id),
    tenant       text NOT NULL REFERENCES tenants (id),
    expires_at   timestamptz,
    legal_hold   boolean NOT NULL DEFAULT false,
    hold_reason  text
);
CREATE INDEX retention_state_due ON retention_state (expires_at) WHERE NOT legal_hold;

-- ------------------------------------------------- upload sessions (operational state)
-- Resumable uploads in progress. Not a view of the log: a completed session becomes a
-- `v1.file.ingested` event; abandoned ones expire and their spooled bytes are removed.
CREATE TABLE uploads (
    id               uuid PRIMARY KEY,
    tenant           text NOT NULL REFERENCES tenants (id),
    -- No foreign key to packages: views are truncated and rebuilt by replay, operational
    -- state must survive that. Completion re-checks the package.
    package_id       uuid NOT NULL,
    relative_path    text NOT NULL,
    media_type       text,
    declared_size    bigint CHECK (declared_size IS NULL OR declared_size >= 0),
    expected_digest  text,
    replace          boolean NOT NULL DEFAULT false,
    received         bigint NOT NULL DEFAULT 0 CHECK (received >= 0),
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL
);
CREATE INDEX uploads_expiry ON uploads (expires_at);

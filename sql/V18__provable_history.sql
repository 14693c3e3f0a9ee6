-- Provable history (docs/adr/0040-hash-chained-event-log.md): a tamper-evident log, signed
-- checkpoints, and signed package attestations. Each event gets:
-- - `digest`: BLAKE3 of its canonical CBOR without its number, set by the writer at INSERT
--   (NULL for events written before this migration, or by a binary that does not set it);
-- - `chain`: BLAKE3(previous event's chain || its sequence, 8 bytes big-endian || digest), 32
--   bytes, the first event's previous chain being 32 zero bytes, set by the sequencer's
--   numbering pass under `event_counter`'s row lock, so chains follow sequence order.
--
-- `chained_through` is the last sequence whose chain is set and `last_chain` its chain. Events
-- numbered before this migration have none yet: numbering passes chain them in order, a
-- bounded number per pass, numbering new events without a chain meanwhile (chained later).
ALTER TABLE events ADD COLUMN digest bytea, ADD COLUMN chain bytea;
-- NOT VALID: checked for every new or changed row, without a scan of the existing ones under
-- this migration's lock (they have neither column).
ALTER TABLE events
    ADD CONSTRAINT events_digest_length CHECK (length(digest) = 32) NOT VALID,
    ADD CONSTRAINT events_chain_length CHECK (length(chain) = 32) NOT VALID,
    ADD CONSTRAINT events_chain_numbered CHECK (chain IS NULL OR sequence IS NOT NULL) NOT VALID;
ALTER TABLE event_counter
    ADD COLUMN chained_through bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_chain bytea NOT NULL DEFAULT decode(repeat('00', 32), 'hex')
        CHECK (length(last_chain) = 32);

-- Still append-only: an unnumbered event may get its number (and with it, or later, its
-- chain), once; nothing else changes, nothing goes.
CREATE OR REPLACE FUNCTION events_numbered_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.position, NEW.ticket, NEW.id, NEW.type, NEW.tenant, NEW.subject_id,
            NEW.occurred_at, NEW.payload, NEW.digest)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.ticket, OLD.id, OLD.type, OLD.tenant, OLD.subject_id,
            OLD.occurred_at, OLD.payload, OLD.digest)
       AND NEW.sequence IS NOT NULL
       AND (OLD.sequence IS NULL OR OLD.sequence = NEW.sequence)
       AND (OLD.chain IS NULL OR OLD.chain = NEW.chain)
       AND (OLD.sequence IS NULL OR OLD.chain IS NULL) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP;
END $$;

-- Events arrive unnumbered and unchained: a number or chain comes only from a numbering pass.
CREATE FUNCTION events_arrive_unnumbered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.sequence IS NOT NULL OR NEW.chain IS NOT NULL THEN
        RAISE EXCEPTION 'an event is inserted without a sequence or chain';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER events_arrive_unnumbered BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_arrive_unnumbered();

-- The public keys this store has signed with (`GET /keys`), kept after a key is rotated out so
-- that what it signed keeps verifying. The private keys stay in their files.
CREATE TABLE signing_keys (
    key_id      text PRIMARY KEY,   -- hex SHA-256 of the raw 32-byte public key
    algorithm   text NOT NULL CHECK (algorithm = 'ed25519'),
    public_key  bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    first_used  timestamptz NOT NULL
);

-- Signed checkpoints of the log: at `sequence` the chain was `chain`; `signature` is the
-- Ed25519 signature by `key_id` over the checkpoint's canonical text (see the ADR). Not
-- events (a checkpoint signs the log; it is not part of it) and not views (replay keeps them).
CREATE TABLE log_checkpoints (
    sequence   bigint PRIMARY KEY CHECK (sequence > 0),
    chain      bytea NOT NULL CHECK (length(chain) = 32),
    made_at    timestamptz NOT NULL,
    key_id     text NOT NULL REFERENCES signing_keys (key_id),
    signature  bytea NOT NULL CHECK (length(signature) = 64)
);

-- Signed attestations of finalized packages: a DSSE envelope (JSON) of an in-toto Statement
-- whose subjects are the package's files, made in the finalizing transaction by a server that
-- holds a signing key (`GET /packages/{id}/attestation`). Kept apart from the views (replay
-- keeps them) and, like retrieval records, without a foreign key to `packages` (a view).
CREATE TABLE package_attestations (
    package_id  uuid PRIMARY KEY,
    key_id      text NOT NULL REFERENCES signing_keys (key_id),
    envelope    bytea NOT NULL,
    made_at     timestamptz NOT NULL
);

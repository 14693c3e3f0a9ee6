-- A tamper-evident log (docs/adr/0040-hash-chained-event-log.md): every numbered event carries
-- `chain` = BLAKE3(previous event's chain || BLAKE3(the event's canonical bytes)), 32 bytes,
-- the first event's previous chain being 32 zero bytes. The sequencer computes it in the
-- numbering pass, under `event_counter`'s row lock, so chains follow sequence order.
--
-- Events numbered before this migration have no chain yet: `chained_through` is the last
-- sequence whose chain is set (0 here) and `last_chain` its chain; the next passes chain the
-- rest in order before numbering new events.
ALTER TABLE events ADD COLUMN chain bytea CHECK (chain IS NULL OR length(chain) = 32);
ALTER TABLE event_counter
    ADD COLUMN chained_through bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_chain bytea NOT NULL DEFAULT decode(repeat('00', 32), 'hex')
        CHECK (length(last_chain) = 32);

-- Still append-only: an unnumbered event may get its number (and with it its chain), and a
-- numbered event without a chain may get its chain; nothing else changes, nothing goes.
CREATE OR REPLACE FUNCTION events_numbered_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.position, NEW.ticket, NEW.id, NEW.type, NEW.tenant, NEW.subject_id,
            NEW.occurred_at, NEW.payload)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.ticket, OLD.id, OLD.type, OLD.tenant, OLD.subject_id,
            OLD.occurred_at, OLD.payload)
       AND NEW.sequence IS NOT NULL
       AND (OLD.sequence IS NULL OR OLD.sequence = NEW.sequence)
       AND (OLD.chain IS NULL OR OLD.chain = NEW.chain)
       AND (OLD.sequence IS NULL OR OLD.chain IS NULL) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP;
END $$;

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

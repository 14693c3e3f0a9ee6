-- Upload sessions whose bytes live in their backend, not on the disk of the server that took
-- the first chunk, so that any server can take the next chunk or complete them. The backend
-- stages them in numbered pieces any server may add (S3: a multipart upload, a piece per
-- part); the session records the staged write, the pieces it keeps, and the bytes received
-- but too few for a piece yet.
ALTER TABLE uploads
    -- Set: the backend the session's bytes are staged in (in pieces); NULL: a spool file.
    ADD COLUMN backend_id text,
    -- The staged write's token, once its first piece is kept.
    ADD COLUMN stage text,
    -- The chunk being received (one at a time; its claim renewed while it runs, so that of
    -- a server that died lapses within seconds).
    ADD COLUMN chunk_by uuid,
    ADD COLUMN chunk_until timestamptz,
    -- A completion's claim on the session (renewed while it runs): another completion waits
    -- for it to end or lapse (its server died). What the claimant does afterwards (renew,
    -- reopen, remove) holds only while the claim is still its own.
    ADD COLUMN completing_until timestamptz,
    ADD COLUMN completing_by uuid;

-- The pieces a session keeps. Piece n holds the bytes from (n - 1) x the backend's piece size:
-- a range sent again goes to the same piece, replacing what a chunk cut off had sent.
CREATE TABLE upload_pieces (
    upload_id uuid    NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    number    integer NOT NULL CHECK (number > 0),
    start     bigint  NOT NULL CHECK (start >= 0),
    size      bigint  NOT NULL CHECK (size > 0),
    receipt   text    NOT NULL,
    PRIMARY KEY (upload_id, number)
);

-- Bytes a session received after its last full piece: the next chunk sends them ahead of its
-- own once a piece is full, completion as the last piece.
CREATE TABLE upload_pending (
    upload_id uuid   NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    start     bigint NOT NULL CHECK (start >= 0),
    bytes     bytea  NOT NULL,
    PRIMARY KEY (upload_id, start)
);

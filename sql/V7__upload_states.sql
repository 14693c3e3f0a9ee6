-- An upload session is `open` (taking chunks) or `completing`: set under the spool's lock
-- before completion moves any byte, and checked by every chunk under the same lock, so no
-- chunk is ever written into a spool that completion is turning into a published blob. A
-- completion that stops short (a 503) sets it back to `open`; one that was killed leaves it
-- `completing`, and completing (or cancelling) it again is still allowed.
ALTER TABLE uploads ADD COLUMN state text NOT NULL DEFAULT 'open'
    CHECK (state IN ('open', 'completing'));

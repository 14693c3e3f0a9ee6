-- Garbage collection: a blob no file references any more is collected (from every backend)
-- after a grace period counted from `unreferenced_since`, which the views keep from the events
-- (a package expired, a file replaced) and clear when a file references the blob again.
-- Blobs left unreferenced before this migration get theirs on the next `artifactstore replay`.
ALTER TABLE blobs ADD COLUMN unreferenced_since timestamptz;
CREATE INDEX blobs_unreferenced ON blobs (unreferenced_since) WHERE unreferenced_since IS NOT NULL;

-- Which directory each local backend is: the marker written in the root of the first server
-- that used it. A server whose root lacks the marker is not looking at the same filesystem as
-- the others (see src/registry/roots.rs). Not a view: no event changes it.
CREATE TABLE local_roots (
    backend_id  text PRIMARY KEY,
    marker      uuid NOT NULL,
    marked_at   timestamptz NOT NULL DEFAULT now()
);

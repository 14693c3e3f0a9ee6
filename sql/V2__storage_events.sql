-- Storage events: verification of stored copies and moves between backends.
-- Blobs are shared by every tenant, so events about them belong to the reserved tenant `system`
-- (a token of that tenant, typically an operator's, can follow them on GET /events); no
-- ordinary tenant sees them.
INSERT INTO tenants (id) VALUES ('system') ON CONFLICT DO NOTHING;

-- Operators list failed and missing copies (GET /storage/locations?status=failed, /health).
CREATE INDEX storage_locations_unhealthy ON storage_locations (status, backend_id)
    WHERE status <> 'present';

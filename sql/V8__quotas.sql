-- Quotas: a tenant's limits (from `v1.tenant.quota_set` events) and its usage, both views
-- rebuilt by replay.

-- The limits an operator set; NULL: no limit. A tenant without a row has the defaults (bytes
-- and packages unlimited, upload sessions as the server's setting says).
CREATE TABLE tenant_quotas (
    tenant               text PRIMARY KEY REFERENCES tenants (id),
    max_bytes            bigint CHECK (max_bytes IS NULL OR max_bytes >= 0),
    max_packages         bigint CHECK (max_packages IS NULL OR max_packages >= 0),
    max_upload_sessions  bigint CHECK (max_upload_sessions IS NULL OR max_upload_sessions >= 0),
    set_at               timestamptz NOT NULL
);

-- What a tenant's live packages hold: the sum of their files' sizes (open packages included;
-- an expired package holds nothing) and how many there are. Kept by a trigger on `packages`,
-- so every way a package's size or status changes (ingests one by one or set-based, replaced
-- files, expiry, replay) keeps it, in the same transaction.
CREATE TABLE tenant_usage (
    tenant         text PRIMARY KEY REFERENCES tenants (id),
    logical_bytes  bigint NOT NULL DEFAULT 0,
    packages       bigint NOT NULL DEFAULT 0
);

CREATE FUNCTION packages_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bytes    bigint := 0;
    counted  bigint := 0;
    owner    text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        bytes := bytes - OLD.total_size;
        counted := counted - (OLD.status <> 'expired')::int;
        owner := OLD.tenant;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        bytes := bytes + NEW.total_size;
        counted := counted + (NEW.status <> 'expired')::int;
        owner := NEW.tenant;
    END IF;
    IF bytes <> 0 OR counted <> 0 THEN
        INSERT INTO tenant_usage AS u (tenant, logical_bytes, packages)
        VALUES (owner, bytes, counted)
        ON CONFLICT (tenant) DO UPDATE
        SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
            packages = u.packages + EXCLUDED.packages;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER packages_usage AFTER INSERT OR DELETE OR UPDATE OF total_size, status ON packages
    FOR EACH ROW EXECUTE FUNCTION packages_usage();

INSERT INTO tenant_usage (tenant, logical_bytes, packages)
SELECT tenant, sum(total_size), count(*) FILTER (WHERE status <> 'expired')
FROM packages GROUP BY tenant;

-- Reservations: the upload sessions of a tenant, open or completing (their declared sizes
-- count against its bytes until their files are recorded). A session that declared no size
-- reserves what it received, or more while a chunk is arriving: `reserved`, the end of the
-- chunk in flight, admitted under the tenant's quota lock.
ALTER TABLE uploads ADD COLUMN reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0);
CREATE INDEX uploads_tenant ON uploads (tenant);

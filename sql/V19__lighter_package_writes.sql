-- Tenant usage: each trigger adds its changes in one statement of its own (planned once per
-- connection, like any statement of a PL/pgSQL function) rather than calling
-- tenant_usage_add once per tenant, a SQL function whose body PostgreSQL parses and plans
-- again on every call: a tenth of a package creation's time in the database. Same arithmetic,
-- same slot, tenants in the same order (V13, V16).

CREATE OR REPLACE FUNCTION packages_usage_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, slot, logical_bytes, packages)
    SELECT tenant, pg_backend_pid() & 63, sum(total_size),
           count(*) FILTER (WHERE status IN ('open', 'finalized'))
    FROM new_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status IN ('open', 'finalized')) <> 0
    ORDER BY tenant COLLATE "C"
    ON CONFLICT (tenant, slot) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION packages_usage_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, slot, logical_bytes, packages)
    SELECT tenant, pg_backend_pid() & 63, sum(bytes), sum(counted)::bigint
    FROM (
        SELECT tenant, total_size AS bytes, (status IN ('open', 'finalized'))::int AS counted
        FROM new_rows
        UNION ALL
        SELECT tenant, -total_size, -((status IN ('open', 'finalized'))::int)
        FROM old_rows
    ) AS change
    GROUP BY tenant
    HAVING sum(bytes) <> 0 OR sum(counted) <> 0
    ORDER BY tenant COLLATE "C"
    ON CONFLICT (tenant, slot) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION packages_usage_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, slot, logical_bytes, packages)
    SELECT tenant, pg_backend_pid() & 63, -sum(total_size),
           -count(*) FILTER (WHERE status IN ('open', 'finalized'))
    FROM old_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status IN ('open', 'finalized')) <> 0
    ORDER BY tenant COLLATE "C"
    ON CONFLICT (tenant, slot) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

-- Nothing calls it any more.
DROP FUNCTION tenant_usage_add(text, numeric, bigint);

-- A package's retention state and its manifest belong to the package and to its tenant: one
-- composite key says so (as for files since V5), where two separate ones allowed a row whose
-- tenant differs from its package's. It is one check per row instead of two, on the new
-- package's row rather than on the tenant's row, which every concurrent package creation of
-- the tenant otherwise locked once more. The keys are added NOT VALID here (no scan while
-- this holds the tables) and validated by V20, which lets reads and writes go on meanwhile.
ALTER TABLE retention_state ADD CONSTRAINT retention_state_package_tenant_fkey
    FOREIGN KEY (package_id, tenant) REFERENCES packages (id, tenant) NOT VALID;
ALTER TABLE retention_state DROP CONSTRAINT retention_state_package_id_fkey;
ALTER TABLE retention_state DROP CONSTRAINT retention_state_tenant_fkey;
ALTER TABLE manifests ADD CONSTRAINT manifests_package_tenant_fkey
    FOREIGN KEY (package_id, tenant) REFERENCES packages (id, tenant) NOT VALID;
ALTER TABLE manifests DROP CONSTRAINT manifests_package_id_fkey;
ALTER TABLE manifests DROP CONSTRAINT manifests_tenant_fkey;

-- Tenant usage kept by statement-level triggers: one aggregated upsert per tenant and
-- statement, instead of one per package row. A set-based statement over many packages (a
-- replay's run of creations, a batch of ingests, an expiry run) then touches each tenant's
-- usage row once, rather than once per package (each time a new version of the same row).
-- Same arithmetic as the row trigger of V8; transition tables cannot take a column list, so the
-- update trigger sees every update of `packages` and counts only the rows whose size or status
-- changed (others cancel out).

DROP TRIGGER packages_usage ON packages;
DROP FUNCTION packages_usage();

CREATE FUNCTION packages_usage_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, logical_bytes, packages)
    SELECT tenant, sum(total_size), count(*) FILTER (WHERE status <> 'expired')
    FROM new_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status <> 'expired') <> 0
    ORDER BY tenant
    ON CONFLICT (tenant) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

CREATE FUNCTION packages_usage_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, logical_bytes, packages)
    SELECT tenant, sum(bytes), sum(counted)
    FROM (
        SELECT tenant, total_size AS bytes, (status <> 'expired')::int AS counted FROM new_rows
        UNION ALL
        SELECT tenant, -total_size, -((status <> 'expired')::int) FROM old_rows
    ) AS change
    GROUP BY tenant
    HAVING sum(bytes) <> 0 OR sum(counted) <> 0
    ORDER BY tenant
    ON CONFLICT (tenant) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

CREATE FUNCTION packages_usage_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant, logical_bytes, packages)
    SELECT tenant, -sum(total_size), -count(*) FILTER (WHERE status <> 'expired')
    FROM old_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status <> 'expired') <> 0
    ORDER BY tenant
    ON CONFLICT (tenant) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
    RETURN NULL;
END $$;

CREATE TRIGGER packages_usage_inserted AFTER INSERT ON packages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION packages_usage_inserted();
CREATE TRIGGER packages_usage_updated AFTER UPDATE ON packages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION packages_usage_updated();
CREATE TRIGGER packages_usage_deleted AFTER DELETE ON packages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION packages_usage_deleted();

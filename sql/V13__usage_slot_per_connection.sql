-- A tenant's usage goes to the slot of the connection that changes it (its backend's pid),
-- not to the slot of each package it touches: a write that changes several packages (a
-- batch of small ingests, an expiry batch) then updates one usage row per tenant, and two
-- writers on different connections update different rows, where slots by package made any two
-- batches that shared one of their packages' slots wait for each other until COMMIT. Which
-- slot holds what is no longer a function of the packages (a slot may even go below zero);
-- only a tenant's sum over its slots means anything, and only that is read and compared.
-- Same arithmetic as V10; each trigger adds one change per tenant, tenants in order. Two
-- connections may share a slot (pids equal modulo 64), so a transaction that changes several
-- tenants' packages must do so in tenant order across its statements as well (a group-commit
-- batch is ordered by tenant; every other writer changes one tenant, or all in one
-- statement), or two such transactions could deadlock on the rows of their shared slot.
-- Tenant order is byte order (COLLATE "C"), the order the application sorts by whatever the
-- database's collation (which may ignore the `-`, `_` and `.` tenant ids can hold).

CREATE FUNCTION tenant_usage_add(changed text, bytes numeric, counted bigint)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO tenant_usage AS u (tenant, slot, logical_bytes, packages)
    VALUES (changed, pg_backend_pid() & 63, bytes, counted)
    ON CONFLICT (tenant, slot) DO UPDATE
    SET logical_bytes = u.logical_bytes + EXCLUDED.logical_bytes,
        packages = u.packages + EXCLUDED.packages;
$$;

CREATE OR REPLACE FUNCTION packages_usage_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenant_usage_add(tenant, sum(total_size), count(*) FILTER (WHERE status <> 'expired'))
    FROM new_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status <> 'expired') <> 0
    ORDER BY tenant COLLATE "C";
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION packages_usage_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenant_usage_add(tenant, sum(bytes), sum(counted)::bigint)
    FROM (
        SELECT tenant, total_size AS bytes, (status <> 'expired')::int AS counted
        FROM new_rows
        UNION ALL
        SELECT tenant, -total_size, -((status <> 'expired')::int)
        FROM old_rows
    ) AS change
    GROUP BY tenant
    HAVING sum(bytes) <> 0 OR sum(counted) <> 0
    ORDER BY tenant COLLATE "C";
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION packages_usage_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenant_usage_add(tenant, -sum(total_size),
                             -count(*) FILTER (WHERE status <> 'expired'))
    FROM old_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status <> 'expired') <> 0
    ORDER BY tenant COLLATE "C";
    RETURN NULL;
END $$;

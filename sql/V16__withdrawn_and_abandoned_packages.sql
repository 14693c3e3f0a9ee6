-- A package can be removed before its retention runs out: an open one abandoned by its
-- producer, a finalized one withdrawn by a tenant admin (`DELETE /packages/{id}`). Like an
-- expired package it keeps its row and its manifest (the tombstone record), now with who
-- removed it, when and why; its files leave the views. Only open and finalized packages
-- count towards a tenant's package quota (the usage triggers of V13, same arithmetic).

ALTER TABLE packages DROP CONSTRAINT packages_status_check;
ALTER TABLE packages ADD CONSTRAINT packages_status_check
    CHECK (status IN ('open', 'finalized', 'expired', 'abandoned', 'withdrawn'));

ALTER TABLE packages
    ADD COLUMN removed_at     timestamptz,
    ADD COLUMN removed_by     text,
    ADD COLUMN removal_reason text;

CREATE OR REPLACE FUNCTION packages_usage_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenant_usage_add(tenant, sum(total_size),
                             count(*) FILTER (WHERE status IN ('open', 'finalized')))
    FROM new_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status IN ('open', 'finalized')) <> 0
    ORDER BY tenant COLLATE "C";
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION packages_usage_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenant_usage_add(tenant, sum(bytes), sum(counted)::bigint)
    FROM (
        SELECT tenant, total_size AS bytes, (status IN ('open', 'finalized'))::int AS counted
        FROM new_rows
        UNION ALL
        SELECT tenant, -total_size, -((status IN ('open', 'finalized'))::int)
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
                             -count(*) FILTER (WHERE status IN ('open', 'finalized')))
    FROM old_rows
    GROUP BY tenant
    HAVING sum(total_size) <> 0 OR count(*) FILTER (WHERE status IN ('open', 'finalized')) <> 0
    ORDER BY tenant COLLATE "C";
    RETURN NULL;
END $$;

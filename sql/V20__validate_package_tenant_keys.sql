-- Checks the rows that were there when V19 added the keys (SHARE UPDATE EXCLUSIVE: reads and
-- writes of retention_state and manifests go on meanwhile). New rows were checked from V19 on.
ALTER TABLE retention_state VALIDATE CONSTRAINT retention_state_package_tenant_fkey;
ALTER TABLE manifests VALIDATE CONSTRAINT manifests_package_tenant_fkey;

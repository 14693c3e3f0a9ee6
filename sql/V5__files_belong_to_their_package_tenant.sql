-- A file's tenant is its package's tenant: one composite foreign key says so, where two
-- separate ones (files.tenant -> tenants, files.package_id -> packages) allowed a file row whose
-- tenant differs from its package's. It is also one check per inserted file instead of two,
-- and no longer takes a share lock on the tenant's row, which every concurrent ingest of a
-- tenant contended for (docs/BENCHMARKS.md, 4 KiB ingests).
ALTER TABLE packages ADD CONSTRAINT packages_id_tenant UNIQUE (id, tenant);
ALTER TABLE files ADD CONSTRAINT files_package_tenant_fkey
    FOREIGN KEY (package_id, tenant) REFERENCES packages (id, tenant);
ALTER TABLE files DROP CONSTRAINT files_package_id_fkey;
ALTER TABLE files DROP CONSTRAINT files_tenant_fkey;

//! Accounting: what a tenant stores, and the retention and collection backlog.

use super::Registry;
use crate::domain::TenantId;
use crate::error::Result;

/// A tenant's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live packages (open or finalized).
    pub packages: u64,
    /// Files in them.
    pub files: u64,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Sum of the sizes of the distinct blobs those files name.
    pub physical_bytes: u64,
    /// Bytes of blobs named by more than one of the tenant's packages.
    pub shared_bytes: u64,
    /// The tenant's finalized packages past their expiry, waiting for a worker.
    pub expiry_backlog: u64,
    /// The tenant's packages past their expiry but kept by a legal hold.
    pub held_past_expiry: u64,
    /// Blobs (of every tenant) no file references, waiting for collection.
    pub unreferenced_blobs: u64,
    /// Their bytes.
    pub unreferenced_bytes: u64,
}

/// The usage query. The tenant's numbers come from its own rows alone (its packages, its files
/// through their `(tenant, blake3)` index; a file's size is its blob's), so the cost of a call
/// grows with the tenant's files, never with every blob stored; the backlog counts read only
/// the unreferenced blobs (a partial index).
#[doc(hidden)]
pub const USAGE_SQL: &str = "\
    WITH mine AS ( \
        SELECT blake3, min(size) AS size, count(*) AS files, \
               count(DISTINCT package_id) AS packages \
        FROM files WHERE tenant = $1 GROUP BY blake3) \
    SELECT \
      (SELECT count(*) FROM packages WHERE tenant = $1 AND status IN ('open', 'finalized')), \
      (SELECT coalesce(sum(files), 0)::bigint FROM mine), \
      (SELECT coalesce(sum(size * files), 0)::bigint FROM mine), \
      (SELECT coalesce(sum(size), 0)::bigint FROM mine), \
      (SELECT coalesce(sum(size), 0)::bigint FROM mine WHERE packages > 1), \
      (SELECT count(*) FROM retention_state r JOIN packages p ON p.id = r.package_id \
       WHERE r.tenant = $1 AND p.status = 'finalized' AND r.expired_at IS NULL \
         AND NOT r.legal_hold AND r.expires_at <= $2), \
      (SELECT count(*) FROM retention_state r JOIN packages p ON p.id = r.package_id \
       WHERE r.tenant = $1 AND p.status = 'finalized' AND r.legal_hold \
         AND r.expires_at <= $2), \
      (SELECT count(*) FROM blobs WHERE unreferenced_since IS NOT NULL), \
      (SELECT coalesce(sum(size), 0)::bigint FROM blobs WHERE unreferenced_since IS NOT NULL)";

impl Registry {
    /// Usage of `tenant`. Only aggregate, tenant-blind numbers concern other tenants.
    pub async fn usage(&self, tenant: &TenantId) -> Result<Usage> {
        let client = self.pool.get().await?;
        let now = self.clock.now().as_datetime();
        let row = client
            .query_one(USAGE_SQL, &[&tenant.as_str(), &now])
            .await?;
        let n = |i: usize| row.get::<_, i64>(i) as u64;
        Ok(Usage {
            packages: n(0),
            files: n(1),
            logical_bytes: n(2),
            physical_bytes: n(3),
            shared_bytes: n(4),
            expiry_backlog: n(5),
            held_past_expiry: n(6),
            unreferenced_blobs: n(7),
            unreferenced_bytes: n(8),
        })
    }
}

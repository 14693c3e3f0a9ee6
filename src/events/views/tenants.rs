//! The views of tenants: `tenant_quotas` (`tenant_usage` follows the other views through
//! triggers).

use super::exec;
use crate::db::Tx;
use crate::error::Result;
use crate::events::payloads::QuotaSet;

pub(super) async fn quota_set(tx: &Tx<'_>, e: &QuotaSet) -> Result<()> {
    let limit = |n: Option<u64>| n.map(|n| n.min(i64::MAX as u64) as i64);
    exec(
        tx,
        "INSERT INTO tenant_quotas (tenant, max_bytes, max_packages, max_upload_sessions, set_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant) DO UPDATE SET max_bytes = EXCLUDED.max_bytes, \
           max_packages = EXCLUDED.max_packages, \
           max_upload_sessions = EXCLUDED.max_upload_sessions, set_at = EXCLUDED.set_at",
        &[
            &e.tenant.as_str(),
            &limit(e.max_bytes),
            &limit(e.max_packages),
            &limit(e.max_upload_sessions),
            &e.set_at.as_datetime(),
        ],
    )
    .await
    .map(drop)
}

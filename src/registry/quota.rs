//! Quotas: how much a tenant may hold, so that no tenant fills what the others need.
//!
//! The operator sets a tenant's limits (`v1.tenant.quota_set`, a view rebuilt by replay):
//! logical bytes (its live files, open packages included, plus the sizes its open upload
//! sessions declared or have received: reservations), live packages, open upload sessions.
//! Without a quota a tenant has no byte or package limit, and as many sessions as the server's
//! default allows.
//!
//! A write is refused *before* its bytes are read where their size is known (a request's
//! `Content-Length`, a session's declared size, a chunk's `Content-Range`), is stopped as soon
//! as it passes the limit otherwise ([`Room`]), and is checked once more in the transaction
//! that records it ([`enforce`]), after its events are recorded: [`enforce`] and session
//! admission take the tenant's quota lock (held to COMMIT) before they read the usage, so
//! concurrent writes of one tenant can never together pass its limits.

use super::Registry;
use crate::db::Tx;
use crate::domain::{PackageId, RelativePath, TenantId, Timestamp};
use crate::error::{Error, QuotaKind, Result};
use crate::events::{self, DomainEvent, QuotaSet};
use deadpool_postgres::GenericClient;
use std::collections::HashMap;
use uuid::Uuid;

/// A tenant's limits; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Most logical bytes (live files plus reservations).
    pub max_bytes: Option<u64>,
    /// Most live packages.
    pub max_packages: Option<u64>,
    /// Most open upload sessions.
    pub max_upload_sessions: Option<u64>,
}

/// What a tenant holds, as its quotas count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaUsage {
    /// Bytes of its live files.
    pub bytes: u64,
    /// Bytes its open upload sessions reserve (declared sizes, else what they received).
    pub reserved_bytes: u64,
    /// Live packages.
    pub packages: u64,
    /// Open upload sessions.
    pub upload_sessions: u64,
}

/// A tenant's limits in force and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQuota {
    /// The tenant.
    pub tenant: TenantId,
    /// The limits in force (the defaults where the operator set none).
    pub limits: Quota,
    /// When the operator last set them; `None`: the defaults.
    pub set_at: Option<Timestamp>,
    /// What it holds.
    pub used: QuotaUsage,
}

/// Room left under a tenant's byte quota, for a write whose size is not known up front: the
/// write is stopped once it has taken more than `limit - used` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The quota.
    pub limit: u64,
    /// What the tenant holds and has reserved.
    pub used: u64,
}

impl Room {
    /// Bytes that may still be written.
    pub fn left(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// The refusal of a write that passed the room.
    pub fn refusal(&self) -> Error {
        Error::OverQuota {
            quota: QuotaKind::Bytes,
            limit: self.limit,
            used: self.used,
        }
    }
}

/// What a recorded write added to one tenant (for [`enforce`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Added {
    pub tenant: TenantId,
    pub bytes: u64,
    pub packages: u64,
    /// The files written, as (package, path): an upload session writing one of them no
    /// longer reserves its bytes (they are counted as the file's).
    pub files: Vec<(Uuid, String)>,
}

/// Upload sessions a count leaves out: one by id (a session taking a chunk, counted by what
/// the chunk brings), and those writing a file being counted (by package and path; only one
/// file can be at a path, so their bytes would be counted twice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writing {
    session: Option<Uuid>,
    packages: Vec<Uuid>,
    paths: Vec<String>,
}

impl Writing {
    /// Nothing left out.
    pub fn nothing() -> Self {
        Self::default()
    }

    /// The session `id`.
    pub fn session(id: Uuid) -> Self {
        Self {
            session: Some(id),
            ..Self::default()
        }
    }

    /// The sessions writing `path` in `package`.
    pub fn file(package: PackageId, path: &RelativePath) -> Self {
        Self::files([(package.0, path.as_str().to_owned())])
    }

    fn files(files: impl IntoIterator<Item = (Uuid, String)>) -> Self {
        let (packages, paths) = files.into_iter().unzip();
        Self {
            session: None,
            packages,
            paths,
        }
    }
}

/// The tenant's quota lock (a transaction advisory lock): taken by session admission and by
/// [`enforce`] where a quota limits what the write adds, so reservations, new files and new
/// packages are counted one at a time.
const QUOTA_LOCKS: i32 = 0x6172_7471; // "artq"

/// The tenant's quota definition lock: [`enforce`] takes it shared before it reads the limits,
/// `set_quota` exclusively, so a write is either checked against a new limit or ends before
/// the limit is set (it is not left out of the count of a write checked after).
const QUOTA_DEFINITIONS: i32 = 0x6172_7464; // "artd"

/// The advisory lock (PostgreSQL's two-key form: `classid`, `objid` in `pg_locks`) that orders
/// `tenant`'s quota changes against its writes: `set_quota` holds it exclusively, every write
/// shared while it checks and until it commits.
pub fn quota_definition_lock(tenant: &TenantId) -> (i32, i32) {
    (QUOTA_DEFINITIONS, lock_key(tenant.as_str()))
}

fn lock_key(tenant: &str) -> i32 {
    let hash = blake3::hash(tenant.as_bytes());
    i32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("four bytes"))
}

async fn lock_quota(tx: &Tx<'_>, tenant: &TenantId) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&QUOTA_LOCKS, &lock_key(tenant.as_str())],
    )
    .await?;
    Ok(())
}

fn limit(value: Option<i64>) -> Option<u64> {
    value.map(|v| v.max(0) as u64)
}

/// The limits in force for `tenant`, and when they were set (`None`: the defaults).
async fn limits_of(
    client: &impl GenericClient,
    tenant: &TenantId,
    default_sessions: u64,
) -> Result<(Quota, Option<Timestamp>)> {
    let row = client
        .query_opt(
            "SELECT max_bytes, max_packages, max_upload_sessions, set_at FROM tenant_quotas \
             WHERE tenant = $1",
            &[&tenant.as_str()],
        )
        .await?;
    Ok(match row {
        Some(r) => (
            Quota {
                max_bytes: limit(r.get(0)),
                max_packages: limit(r.get(1)),
                max_upload_sessions: limit(r.get(2)),
            },
            Some(Timestamp::from_datetime(r.get(3))),
        ),
        None => (
            Quota {
                max_upload_sessions: Some(default_sessions),
                ..Quota::default()
            },
            None,
        ),
    })
}

/// What `tenant` holds. Its live sessions (open, or completing: their files not recorded
/// yet) but those `writing` reserve their declared sizes, else what they received or were
/// admitted to receive; every live session counts against the session quota.
async fn usage_of(
    client: &impl GenericClient,
    tenant: &TenantId,
    now: Timestamp,
    writing: &Writing,
) -> Result<QuotaUsage> {
    let statement = client
        .prepare_cached(
            "SELECT \
               (SELECT coalesce(sum(logical_bytes), 0)::bigint FROM tenant_usage \
                WHERE tenant = $1), \
               (SELECT coalesce(sum(packages), 0)::bigint FROM tenant_usage WHERE tenant = $1), \
               count(*), \
               coalesce(sum(coalesce(declared_size, greatest(received, reserved))) FILTER ( \
                 WHERE id IS DISTINCT FROM $3 \
                   AND (package_id, relative_path) NOT IN ( \
                     SELECT * FROM unnest($4::uuid[], $5::text[]))), 0)::bigint \
             FROM uploads \
             WHERE tenant = $1 AND expires_at > $2",
        )
        .await?;
    let row = client
        .query_one(
            &statement,
            &[
                &tenant.as_str(),
                &now.as_datetime(),
                &writing.session,
                &writing.packages,
                &writing.paths,
            ],
        )
        .await?;
    let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    Ok(QuotaUsage {
        bytes: n(0),
        packages: n(1),
        upload_sessions: n(2),
        reserved_bytes: n(3),
    })
}

/// Refuses, after `added` was recorded in `tx`, if a tenant it added to is now past a limit
/// (holding the tenant's quota lock to COMMIT, so concurrent writes are counted one at a time).
/// The write's bytes do not count as `used` in the refusal.
pub(super) async fn enforce(tx: &Tx<'_>, added: &[Added], now: Timestamp) -> Result<()> {
    let mut tenants: Vec<&str> = added.iter().map(|a| a.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    // The limits are read holding the tenants' definition locks shared (sent together, run in
    // order): a `set_quota` waits for this write to end, and one that committed first is seen.
    let keys: Vec<i32> = tenants.iter().map(|t| lock_key(t)).collect();
    let (definitions, statement) = futures::try_join!(
        tx.prepare_cached(
            "SELECT pg_advisory_xact_lock_shared($1, k) \
             FROM (SELECT DISTINCT k FROM unnest($2::int4[]) AS k ORDER BY k) s"
        ),
        tx.prepare_cached(
            "SELECT q.tenant, q.max_bytes, q.max_packages \
             FROM tenant_quotas q WHERE q.tenant = ANY($1) \
               AND (q.max_bytes IS NOT NULL OR q.max_packages IS NOT NULL) \
             ORDER BY q.tenant",
        ),
    )?;
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&QUOTA_DEFINITIONS, &keys];
    let read_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tenants];
    let (_, quotas) = futures::try_join!(
        tx.execute(&definitions, &lock_params),
        tx.query(&statement, &read_params),
    )?;
    for row in &quotas {
        let tenant = TenantId::new(row.get::<_, &str>(0))?;
        let own = || added.iter().filter(|a| a.tenant == tenant);
        let (bytes, packages) = own().fold((0, 0), |(b, p), a| (b + a.bytes, p + a.packages));
        let (max_bytes, max_packages) = (limit(row.get(1)), limit(row.get(2)));
        if (max_bytes.is_some() && bytes > 0) || (max_packages.is_some() && packages > 0) {
            lock_quota(tx, &tenant).await?;
        }
        let writing = Writing::files(own().flat_map(|a| a.files.iter().cloned()));
        let usage = usage_of(tx, &tenant, now, &writing).await?;
        if let Some(max) = max_packages
            && packages > 0
            && usage.packages > max
        {
            return Err(Error::OverQuota {
                quota: QuotaKind::Packages,
                limit: max,
                used: usage.packages.saturating_sub(packages),
            });
        }
        let holds = usage.bytes + usage.reserved_bytes;
        if let Some(max) = max_bytes
            && bytes > 0
            && holds > max
        {
            return Err(Error::OverQuota {
                quota: QuotaKind::Bytes,
                limit: max,
                used: holds.saturating_sub(bytes),
            });
        }
    }
    Ok(())
}

/// The room under its byte quota of each tenant with one among those writing `files`
/// (tenant, package, path), the sessions writing those files left out: for refusing a file of
/// a batch before recording it, so that one tenant past its quota does not fail the others'
/// batch. No lock is taken: [`enforce`] still decides.
pub(super) async fn rooms(
    tx: &Tx<'_>,
    files: &[(&TenantId, Uuid, &str)],
    now: Timestamp,
) -> Result<HashMap<TenantId, Room>> {
    let mut tenants: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let statement = tx
        .prepare_cached(
            "SELECT tenant, max_bytes FROM tenant_quotas \
             WHERE tenant = ANY($1) AND max_bytes IS NOT NULL",
        )
        .await?;
    let mut rooms = HashMap::new();
    for row in tx.query(&statement, &[&tenants]).await? {
        let tenant = TenantId::new(row.get::<_, &str>(0))?;
        let writing = Writing::files(
            files
                .iter()
                .filter(|f| *f.0 == tenant)
                .map(|f| (f.1, f.2.to_owned())),
        );
        let usage = usage_of(tx, &tenant, now, &writing).await?;
        let room = Room {
            limit: limit(row.get(1)).unwrap_or(0),
            used: usage.bytes + usage.reserved_bytes,
        };
        rooms.insert(tenant, room);
    }
    Ok(rooms)
}

impl Registry {
    /// Sets `tenant`'s limits (the operator's business): a `v1.tenant.quota_set` event of that
    /// tenant. Lowering a limit below what the tenant holds refuses its next writes; it takes
    /// nothing away.
    pub async fn set_quota(&self, tenant: &TenantId, quota: Quota) -> Result<TenantQuota> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&QUOTA_DEFINITIONS, &lock_key(tenant.as_str())],
        )
        .await?;
        tx.execute(
            "INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&tenant.as_str()],
        )
        .await?;
        let recorded = events::record(
            &tx,
            vec![DomainEvent::new(QuotaSet {
                tenant: tenant.clone(),
                max_bytes: quota.max_bytes,
                max_packages: quota.max_packages,
                max_upload_sessions: quota.max_upload_sessions,
                set_at: self.clock.now(),
            })],
        )
        .await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        self.quota(tenant).await
    }

    /// `tenant`'s limits in force and what it holds.
    pub async fn quota(&self, tenant: &TenantId) -> Result<TenantQuota> {
        let client = self.pool.get().await?;
        let (limits, set_at) =
            limits_of(&client, tenant, self.limits.default_max_upload_sessions).await?;
        let used = usage_of(&client, tenant, self.clock.now(), &Writing::nothing()).await?;
        Ok(TenantQuota {
            tenant: tenant.clone(),
            limits,
            set_at,
            used,
        })
    }

    /// The room `tenant` has under its byte quota for a write of `adding` bytes (0 when the
    /// size is not known): `None` without a byte quota; `OverQuota` when `adding` does not
    /// fit. The sessions `writing` the file do not count as reservations.
    /// A check before any byte is read; the write's recording checks again.
    pub async fn room_for(
        &self,
        tenant: &TenantId,
        adding: u64,
        writing: &Writing,
    ) -> Result<Option<Room>> {
        let client = self.pool.get().await?;
        let (limits, _) = limits_of(&client, tenant, 0).await?;
        let Some(max) = limits.max_bytes else {
            return Ok(None);
        };
        let usage = usage_of(&client, tenant, self.clock.now(), writing).await?;
        let room = Room {
            limit: max,
            used: usage.bytes + usage.reserved_bytes,
        };
        if adding > room.left() {
            return Err(room.refusal());
        }
        Ok(Some(room))
    }

    /// Admits a new upload session of `tenant` reserving `size` bytes, in `tx` (which then
    /// inserts it): refused past the tenant's session or byte quota.
    pub(super) async fn admit_session(
        &self,
        tx: &Tx<'_>,
        tenant: &TenantId,
        size: Option<u64>,
    ) -> Result<()> {
        let (limits, _) = limits_of(tx, tenant, self.limits.default_max_upload_sessions).await?;
        if limits.max_upload_sessions.is_none() && limits.max_bytes.is_none() {
            return Ok(());
        }
        lock_quota(tx, tenant).await?;
        let usage = usage_of(tx, tenant, self.clock.now(), &Writing::nothing()).await?;
        if let Some(max) = limits.max_upload_sessions
            && usage.upload_sessions >= max
        {
            return Err(Error::OverQuota {
                quota: QuotaKind::UploadSessions,
                limit: max,
                used: usage.upload_sessions,
            });
        }
        if let Some(max) = limits.max_bytes {
            let holds = usage.bytes + usage.reserved_bytes;
            if size.unwrap_or(0) > max.saturating_sub(holds) {
                return Err(Error::OverQuota {
                    quota: QuotaKind::Bytes,
                    limit: max,
                    used: holds,
                });
            }
        }
        Ok(())
    }

    /// Admits a chunk of the session `id` (one that declared no size) that takes it to `end`
    /// bytes, under the tenant's quota lock: the session then reserves `end` bytes until the
    /// chunk's progress is recorded (which sets it back to what was received), so concurrent chunks of several
    /// sessions cannot together pass the byte quota. `None` without a byte quota; otherwise
    /// the room the chunk has (for a chunk whose end is not known, `end` is its start).
    pub(super) async fn reserve_chunk(
        &self,
        tenant: &TenantId,
        id: Uuid,
        end: u64,
    ) -> Result<Option<Room>> {
        let mut client = self.pool.get().await?;
        let (limits, _) = limits_of(&client, tenant, 0).await?;
        let Some(max) = limits.max_bytes else {
            return Ok(None);
        };
        let tx = client.transaction().await?;
        lock_quota(&tx, tenant).await?;
        let usage = usage_of(&tx, tenant, self.clock.now(), &Writing::session(id)).await?;
        let room = Room {
            limit: max,
            used: usage.bytes + usage.reserved_bytes,
        };
        if end > room.left() {
            return Err(room.refusal());
        }
        tx.execute(
            "UPDATE uploads SET reserved = $2 WHERE id = $1",
            &[&id, &(end as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(room))
    }
}

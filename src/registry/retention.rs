//! Retention: classes, legal holds, class changes, and expiry of due packages.

use super::Registry;
use super::packages::{live, load_package};
use super::types::{Package, PackageStatus};
use crate::domain::{PackageId, TenantId, Timestamp, validate_label};
use crate::error::{Error, Result};
use crate::events::{
    self, ClassChanged, ClassDefined, DomainEvent, HoldReleased, HoldSet, PackageExpired,
};
use crate::retention::{self as policy, DueReason, RetentionFacts};

/// A retention class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionClass {
    /// Name.
    pub name: String,
    /// Seconds packages are kept after finalization; `None`: forever.
    pub duration_seconds: Option<u64>,
    /// What it is for.
    pub description: String,
}

/// A package that expired (or, in a dry run, would).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The package.
    pub package_id: PackageId,
    /// Its owner.
    pub tenant: TenantId,
    /// Its class.
    pub retention_class: String,
    /// Why.
    pub reason: DueReason,
    /// When it fell due.
    pub due_at: Timestamp,
}

/// Longest duration a retention class may have: 100 years (of 365.25 days). Any finalization
/// time plus this stays far inside the calendar, so a class can never make finalize fail.
pub const MAX_CLASS_DURATION_SECONDS: u64 = 3_155_760_000;

/// Due packages, oldest due first (the dry run's list): finalized ones whose expiry passed,
/// and open ones created before `$2` (the open-package grace ago). `$1` is now. Held and
/// expired ones never are. Expiry claims them with [`claim_finalized_sql`] and
/// [`claim_open_sql`].
const DUE_SQL: &str = "SELECT p.id, p.tenant, p.retention_class, p.status, p.created_at, \
        r.expires_at, r.legal_hold FROM packages p JOIN retention_state r ON r.package_id = p.id \
     WHERE NOT r.legal_hold AND r.expired_at IS NULL \
       AND ((p.status = 'finalized' AND r.expires_at <= $1) \
            OR (p.status = 'open' AND p.created_at <= $2)) \
     ORDER BY coalesce(r.expires_at, p.created_at) LIMIT $3";

/// The columns [`DUE_SQL`] and the claims return, in its order.
const DUE_COLUMNS: &str = "p.id, p.tenant, p.retention_class, p.status, p.created_at, \
    r.expires_at, r.legal_hold";

/// Claims up to `$2` finalized packages expired by `$1`, the earliest expiry first: an index
/// scan of `retention_state_pending` in order that stops at `$2` rows, skipping rows another
/// worker holds. ([`DUE_SQL`]'s one ordering over both kinds sorted every due package for
/// each batch: a backlog of n packages cost n²/batch rows.)
fn claim_finalized_sql() -> String {
    format!(
        "SELECT {DUE_COLUMNS} FROM retention_state r JOIN packages p ON p.id = r.package_id \
         WHERE NOT r.legal_hold AND r.expired_at IS NULL AND r.expires_at IS NOT NULL \
           AND r.expires_at <= $1 AND p.status = 'finalized' \
         ORDER BY r.expires_at LIMIT $2 FOR UPDATE OF p, r SKIP LOCKED"
    )
}

/// Claims up to `$2` open packages created by `$1` (the open-package grace ago), the oldest
/// first (`packages_open_created` in order), skipping rows another worker holds.
fn claim_open_sql() -> String {
    format!(
        "SELECT {DUE_COLUMNS} FROM packages p JOIN retention_state r ON r.package_id = p.id \
         WHERE p.status = 'open' AND p.created_at <= $1 \
           AND NOT r.legal_hold AND r.expired_at IS NULL \
         ORDER BY p.created_at LIMIT $2 FOR UPDATE OF p, r SKIP LOCKED"
    )
}

fn facts(row: &tokio_postgres::Row) -> Result<RetentionFacts> {
    Ok(RetentionFacts {
        finalized: PackageStatus::parse(row.get(3))? == PackageStatus::Finalized,
        expired: false,
        legal_hold: row.get(6),
        created_at: Timestamp::from_datetime(row.get(4)),
        expires_at: row
            .get::<_, Option<time::OffsetDateTime>>(5)
            .map(Timestamp::from_datetime),
    })
}

fn validate_class_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "retention class `{}` is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-'",
            name.escape_debug()
        )))
    }
}

impl Registry {
    /// Every retention class, by name.
    pub async fn list_retention_classes(&self) -> Result<Vec<RetentionClass>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, duration_seconds, description FROM retention_classes ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RetentionClass {
                name: r.get(0),
                duration_seconds: r.get::<_, Option<i64>>(1).map(|d| d as u64),
                description: r.get(2),
            })
            .collect())
    }

    /// Defines (or redefines) a class. Packages already finalized keep the expiry they got.
    pub async fn define_retention_class(&self, class: RetentionClass) -> Result<RetentionClass> {
        validate_class_name(&class.name)?;
        if !class.description.is_empty() {
            validate_label("description", &class.description)?;
        }
        if class
            .duration_seconds
            .is_some_and(|d| !(1..=MAX_CLASS_DURATION_SECONDS).contains(&d))
        {
            return Err(Error::InvalidInput(format!(
                "duration_seconds must be from 1 to {MAX_CLASS_DURATION_SECONDS} (100 years); \
                 keep packages longer with `forever`"
            )));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let recorded = events::record(
            &tx,
            vec![DomainEvent::new(ClassDefined {
                name: class.name.clone(),
                duration_seconds: class.duration_seconds,
                description: class.description.clone(),
                defined_at: self.clock.now(),
            })],
        )
        .await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(class)
    }

    /// Puts a legal hold on a package: it never expires while held.
    pub async fn set_legal_hold(
        &self,
        tenant: &TenantId,
        id: PackageId,
        reason: String,
    ) -> Result<Package> {
        validate_label("reason", &reason)?;
        self.retention_mutation(tenant, id, |_, now| {
            Ok(DomainEvent::of(
                tenant,
                HoldSet {
                    package_id: id,
                    reason: reason.clone(),
                    set_at: now,
                },
            ))
        })
        .await
    }

    /// Lifts a package's legal hold; an expiry that fell due meanwhile happens next.
    pub async fn release_legal_hold(&self, tenant: &TenantId, id: PackageId) -> Result<Package> {
        self.retention_mutation(tenant, id, |package, now| {
            if !package.retention.legal_hold {
                return Err(Error::Conflict(format!(
                    "package {id} is not under legal hold"
                )));
            }
            Ok(DomainEvent::of(
                tenant,
                HoldReleased {
                    package_id: id,
                    released_at: now,
                },
            ))
        })
        .await
    }

    /// Moves a package to another class. A finalized package's expiry becomes its
    /// finalization time plus the new class's duration, which may extend but not shorten what
    /// it had unless `force` (admins only: the caller decides who may force).
    pub async fn change_retention_class(
        &self,
        tenant: &TenantId,
        id: PackageId,
        class: String,
        force: bool,
    ) -> Result<Package> {
        let classes = self.list_retention_classes().await?;
        let target = classes
            .into_iter()
            .find(|c| c.name == class)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "retention class `{}` does not exist",
                    class.escape_debug()
                ))
            })?;
        self.retention_mutation(tenant, id, |package, now| {
            let expires_at = match (package.status, package.finalized_at) {
                (PackageStatus::Finalized, Some(finalized)) => match target.duration_seconds {
                    Some(d) => Some(finalized.plus_seconds(d as i64).ok_or_else(|| {
                        Error::InvalidInput("the new expiry overflows the calendar".into())
                    })?),
                    None => None,
                },
                _ => None,
            };
            if package.status == PackageStatus::Finalized {
                policy::check_class_change(package.retention.expires_at, expires_at, force)?;
            }
            Ok(DomainEvent::of(
                tenant,
                ClassChanged {
                    package_id: id,
                    from: package.retention_class.clone(),
                    to: target.name.clone(),
                    expires_at,
                    forced: force,
                    changed_at: now,
                },
            ))
        })
        .await
    }

    /// Locks the live package, builds one event from it, records it, returns the package after.
    pub(super) async fn retention_mutation(
        &self,
        tenant: &TenantId,
        id: PackageId,
        event: impl FnOnce(&Package, Timestamp) -> Result<DomainEvent>,
    ) -> Result<Package> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.query_opt(
            "SELECT 1 FROM packages WHERE id = $1 AND tenant = $2 FOR UPDATE",
            &[&id.0, &tenant.as_str()],
        )
        .await?
        .ok_or_else(|| Error::not_found("package", id))?;
        let package = live(load_package(&*tx, tenant, id).await?)?;
        let event = event(&package, self.clock.now())?;
        let recorded = events::record(&tx, vec![event]).await?;
        let after = load_package(&*tx, tenant, id).await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(after)
    }

    /// When the next package falls due (`None`: nothing will without a change), given the
    /// open-package grace.
    pub async fn next_expiry(&self, open_grace_seconds: i64) -> Result<Option<Timestamp>> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT min(expires_at) FROM retention_state \
                         WHERE NOT legal_hold AND expired_at IS NULL AND expires_at IS NOT NULL), \
                        (SELECT min(p.created_at) FROM packages p \
                         JOIN retention_state r ON r.package_id = p.id \
                         WHERE p.status = 'open' AND NOT r.legal_hold)",
                &[],
            )
            .await?;
        let finalized = row
            .get::<_, Option<time::OffsetDateTime>>(0)
            .map(Timestamp::from_datetime);
        let open = row
            .get::<_, Option<time::OffsetDateTime>>(1)
            .map(Timestamp::from_datetime)
            .and_then(|t| t.plus_seconds(open_grace_seconds));
        Ok(match (finalized, open) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Packages due now, without changing anything (for `--dry-run`).
    pub async fn due_packages(&self, open_grace_seconds: i64, limit: i64) -> Result<Vec<Expiry>> {
        let client = self.pool.get().await?;
        let (now, open_cutoff) = self.due_bounds(open_grace_seconds)?;
        let rows = client.query(DUE_SQL, &[&now, &open_cutoff, &limit]).await?;
        rows.iter()
            .filter_map(|row| self.expiry_of(row, open_grace_seconds).transpose())
            .collect()
    }

    /// Expires up to `limit` due packages in one transaction and returns them. Rows are claimed
    /// with `FOR UPDATE SKIP LOCKED`, so concurrent workers never take the same package and
    /// each is expired exactly once; a worker killed mid-batch rolls back and its batch is
    /// claimed again by another.
    pub async fn expire_due(&self, open_grace_seconds: i64, limit: i64) -> Result<Vec<Expiry>> {
        let (now, open_cutoff) = self.due_bounds(open_grace_seconds)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Finalized packages past their expiry first, then open ones past their grace.
        let mut rows = tx.query(&claim_finalized_sql(), &[&now, &limit]).await?;
        let room = limit - rows.len() as i64;
        if room > 0 {
            rows.extend(tx.query(&claim_open_sql(), &[&open_cutoff, &room]).await?);
        }
        let due = rows
            .iter()
            .filter_map(|row| self.expiry_of(row, open_grace_seconds).transpose())
            .collect::<Result<Vec<_>>>()?;
        if due.is_empty() {
            return Ok(due);
        }
        let expired_at = self.clock.now();
        let events = due
            .iter()
            .map(|e| {
                DomainEvent::of(
                    &e.tenant,
                    PackageExpired {
                        package_id: e.package_id,
                        retention_class: e.retention_class.clone(),
                        reason: e.reason.as_str().to_owned(),
                        due_at: e.due_at,
                        expired_at,
                    },
                )
            })
            .collect();
        let recorded = events::record(&tx, events).await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(due)
    }

    fn due_bounds(
        &self,
        open_grace_seconds: i64,
    ) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
        let now = self.clock.now();
        let open_cutoff = now
            .plus_seconds(-open_grace_seconds)
            .ok_or_else(|| Error::InvalidInput("open-package grace overflows".into()))?;
        Ok((now.as_datetime(), open_cutoff.as_datetime()))
    }

    /// The policy's verdict on one candidate row (the SQL pre-selects; the policy decides).
    fn expiry_of(
        &self,
        row: &tokio_postgres::Row,
        open_grace_seconds: i64,
    ) -> Result<Option<Expiry>> {
        let facts = facts(row)?;
        let now = self.clock.now();
        if !policy::is_due(&facts, open_grace_seconds, now) {
            return Ok(None);
        }
        let (due_at, reason) = policy::due(&facts, open_grace_seconds).expect("is due");
        Ok(Some(Expiry {
            package_id: PackageId(row.get(0)),
            tenant: TenantId::new(row.get(1))?,
            retention_class: row.get(2),
            reason,
            due_at,
        }))
    }
}

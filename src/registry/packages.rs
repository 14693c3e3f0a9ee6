//! Creating, reading and listing packages.

use super::Registry;
use super::types::{
    FILE_COLUMNS, FileRecord, PACKAGE_COLUMNS, PACKAGE_FROM, Package, PackageStatus,
};
use crate::domain::{Metadata, PackageId, TenantId, validate_label};
use crate::error::{Error, Result};
use crate::events::{self, DomainEvent, PackageCreated};
use tokio_postgres::GenericClient;

/// What a new package needs.
#[derive(Debug, Clone, Default)]
pub struct NewPackage {
    /// What produced it.
    pub producer: String,
    /// What it is about.
    pub subject: String,
    /// Retention class; `standard` when absent.
    pub retention_class: Option<String>,
    /// Text labels.
    pub metadata: Metadata,
}

/// Listing filters. All given filters must match.
#[derive(Debug, Clone, Default)]
pub struct PackageFilter {
    /// Exact producer.
    pub producer: Option<String>,
    /// Exact subject.
    pub subject: Option<String>,
    /// Exact retention class.
    pub retention_class: Option<String>,
    /// Status.
    pub status: Option<PackageStatus>,
    /// Metadata entries that must all be present with these exact values.
    pub metadata: Vec<(String, String)>,
    /// Page size (1..=1000).
    pub limit: u32,
    /// Continue after this cursor (from a previous page).
    pub cursor: Option<i64>,
}

/// One page of packages, newest first.
#[derive(Debug, Clone)]
pub struct PackagePage {
    /// The packages.
    pub items: Vec<Package>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

/// The retention class used when a package names none.
pub const DEFAULT_RETENTION_CLASS: &str = "standard";

impl Registry {
    /// Opens a new package.
    pub async fn create_package(&self, tenant: &TenantId, new: NewPackage) -> Result<Package> {
        validate_label("producer", &new.producer)?;
        validate_label("subject", &new.subject)?;
        let retention_class = new
            .retention_class
            .unwrap_or_else(|| DEFAULT_RETENTION_CLASS.into());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One round trip for both (prepared once per connection, sent together): a package
        // creation is a handful of round trips, and the fleet's event rate is bound by them.
        let (class, known_tenant) = futures::try_join!(
            tx.prepare_cached("SELECT 1 FROM retention_classes WHERE name = $1"),
            tx.prepare_cached("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING"),
        )?;
        let event = PackageCreated {
            package_id: PackageId::generate(),
            tenant: tenant.clone(),
            producer: new.producer,
            subject: new.subject,
            retention_class,
            metadata: new.metadata,
            created_at: self.clock.now(),
        };
        let mut package = Package {
            id: event.package_id,
            tenant: tenant.clone(),
            producer: event.producer.clone(),
            subject: event.subject.clone(),
            retention_class: event.retention_class.clone(),
            metadata: event.metadata.clone(),
            status: PackageStatus::Open,
            created_at: event.created_at,
            finalized_at: None,
            manifest_digest: None,
            file_count: 0,
            total_size: 0,
            created_position: 0,
            retention: super::types::RetentionInfo {
                expires_at: None,
                legal_hold: false,
                hold_reason: None,
                expired_at: None,
                expiry_reason: None,
            },
            removal: None,
        };
        // The class's check and the tenant's row go with the event's position (one round trip),
        // and an unknown class stops the creation before the views change.
        let class_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] =
            [&package.retention_class];
        let tenant_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tenant.as_str()];
        let (stored, ()) = events::record_alongside(&tx, vec![DomainEvent::new(event)], async {
            let (known, _) = futures::try_join!(
                tx.query_opt(&class, &class_params),
                tx.execute(&known_tenant, &tenant_params),
            )?;
            match known {
                Some(_) => Ok(()),
                None => Err(Error::InvalidInput(format!(
                    "retention class `{}` does not exist",
                    package.retention_class.escape_debug()
                ))),
            }
        })
        .await?;
        package.created_position = stored[0].position;
        let added = super::quota::Added {
            tenant: tenant.clone(),
            bytes: 0,
            packages: 1,
            files: Vec::new(),
        };
        super::quota::enforce(&tx, &[added], self.clock.now()).await?;
        events::commit(tx, &stored, &self.sequencer).await?;
        Ok(package)
    }

    /// A package; an expired one is `Gone`.
    pub async fn get_package(&self, tenant: &TenantId, id: PackageId) -> Result<Package> {
        let client = self.pool.get().await?;
        live(load_package(&**client, tenant, id).await?)
    }

    /// A package's files, sorted by relative path.
    pub async fn list_files(&self, tenant: &TenantId, id: PackageId) -> Result<Vec<FileRecord>> {
        let client = self.pool.get().await?;
        live(load_package(&**client, tenant, id).await?)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {FILE_COLUMNS} FROM files f JOIN blobs b ON b.blake3 = f.blake3 \
                     WHERE f.package_id = $1 AND f.tenant = $2"
                ),
                &[&id.0, &tenant.as_str()],
            )
            .await?;
        let mut files = rows
            .iter()
            .map(FileRecord::from_row)
            .collect::<Result<Vec<_>>>()?;
        files.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        Ok(files)
    }

    /// Lists packages newest first (by the position of their creation event). Pages are stable
    /// under concurrent inserts: the cursor is a position, and a package created meanwhile
    /// shows on a later page if its position is below the cursor, else not at all; none is
    /// shown twice.
    pub async fn list_packages(
        &self,
        tenant: &TenantId,
        filter: &PackageFilter,
    ) -> Result<PackagePage> {
        if !(1..=1000).contains(&filter.limit) {
            return Err(Error::InvalidInput(
                "limit must be between 1 and 1000".into(),
            ));
        }
        // PostgreSQL text cannot hold NUL: such a filter can match nothing, and is a client bug.
        let texts = [&filter.producer, &filter.subject, &filter.retention_class];
        let meta = filter.metadata.iter().flat_map(|(k, v)| [k, v]);
        if texts
            .into_iter()
            .flatten()
            .chain(meta)
            .any(|t| t.contains('\0'))
        {
            return Err(Error::InvalidInput(
                "filters must not contain NUL characters".into(),
            ));
        }
        let metadata: serde_json::Map<String, serde_json::Value> = filter
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let metadata = serde_json::Value::Object(metadata);
        let status = filter.status.map(PackageStatus::as_str);
        let fetch = i64::from(filter.limit) + 1;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {PACKAGE_COLUMNS} FROM {PACKAGE_FROM} \
                     WHERE packages.tenant = $1 \
                       AND ($2::text IS NULL OR producer = $2) \
                       AND ($3::text IS NULL OR subject = $3) \
                       AND ($4::text IS NULL OR retention_class = $4) \
                       AND ($5::text IS NULL OR status = $5) \
                       AND metadata @> $6::jsonb \
                       AND ($7::bigint IS NULL OR created_position < $7) \
                     ORDER BY created_position DESC LIMIT $8"
                ),
                &[
                    &tenant.as_str(),
                    &filter.producer,
                    &filter.subject,
                    &filter.retention_class,
                    &status,
                    &metadata,
                    &filter.cursor,
                    &fetch,
                ],
            )
            .await?;
        let mut items = rows
            .iter()
            .map(Package::from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = if items.len() > filter.limit as usize {
            items.truncate(filter.limit as usize);
            items.last().map(|p| p.created_position)
        } else {
            None
        };
        Ok(PackagePage { items, next_cursor })
    }
}

pub(crate) async fn load_package(
    client: &impl GenericClient,
    tenant: &TenantId,
    id: PackageId,
) -> Result<Package> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {PACKAGE_COLUMNS} FROM {PACKAGE_FROM} \
                 WHERE packages.id = $1 AND packages.tenant = $2"
            ),
            &[&id.0, &tenant.as_str()],
        )
        .await?
        .ok_or_else(|| Error::not_found("package", id))?;
    Package::from_row(&row)
}

/// The package, or `Gone` when it has expired, or was abandoned or withdrawn.
pub(crate) fn live(package: Package) -> Result<Package> {
    if package.status.is_gone() {
        return Err(gone(&package));
    }
    Ok(package)
}

/// The problem a gone package answers with: when and why (and by whom, if removed), and where
/// its record remains.
pub(crate) fn gone(package: &Package) -> Error {
    let record = match &package.manifest_digest {
        Some(digest) => format!(
            "; its manifest ({digest}) stays readable at /packages/{}/manifest",
            package.id
        ),
        None => String::new(),
    };
    if let Some(removal) = &package.removal {
        let why = removal
            .reason
            .as_deref()
            .map_or_else(String::new, |r| format!(": {}", r.escape_debug()));
        return Error::Gone(format!(
            "package {} was {} at {} by `{}`{why}{record}",
            package.id,
            package.status.as_str(),
            removal.at,
            removal.by
        ));
    }
    let when = package
        .retention
        .expired_at
        .map_or_else(|| "earlier".to_owned(), |t| format!("at {t}"));
    let why = match package.retention.expiry_reason.as_deref() {
        Some("abandoned") => "it was never finalized".to_owned(),
        _ => format!("its retention class `{}` ran out", package.retention_class),
    };
    Error::Gone(format!(
        "package {} expired {when}: {why}{record}",
        package.id
    ))
}

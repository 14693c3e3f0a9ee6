//! Admission of files into packages: a package takes a file only while it is the tenant's,
//! open, has room, and the path is free (or the file replaces the one there). Every way of
//! adding a file (ingest, upload sessions, group commit, dedup links) asks here.

use super::Registry;
use super::types::{IngestRequest, PackageStatus};
use crate::domain::{FileId, PackageId, RelativePath, TenantId};
use crate::error::{Error, Result};
use crate::identity::Digest;
use crate::storage::BlobStore;

/// What a write takes of a local backend's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disk {
    /// New bytes: this many, or not known. Refused if the disk would be left with less than
    /// the minimum free.
    Writes(Option<u64>),
    /// Checked by the caller once it knows the backend (bytes already on this server's disk
    /// may need no more of it).
    Unchecked,
}

impl Registry {
    /// The backend a file's bytes go to, once the package is found able to take the file
    /// (the tenant's, open, with room, the path free or replaceable).
    pub(super) async fn backend_for(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        request: &IngestRequest,
    ) -> Result<std::sync::Arc<dyn BlobStore>> {
        Ok(self
            .admit(tenant, package_id, request, None, Disk::Writes(None))
            .await?
            .0)
    }

    /// [`backend_for`](Self::backend_for), and the room the tenant's byte quota leaves for
    /// `size` bytes (or, the size unknown, for any): `None` without a byte quota. `disk`: what
    /// the write takes of the backend's disk, if it is this server's.
    pub(super) async fn admit(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        request: &IngestRequest,
        size: Option<u64>,
        disk: Disk,
    ) -> Result<(std::sync::Arc<dyn BlobStore>, Option<super::Room>)> {
        let can_add = {
            let client = self.pool.get().await?;
            check_can_add(
                &client,
                tenant,
                package_id,
                request,
                self.limits.max_files_per_package,
                false,
            )
            .await?
        };
        let room = if can_add.byte_quota {
            let writing = super::Writing::file(package_id, &request.relative_path);
            self.room_for(tenant, size.unwrap_or(0), &writing).await?
        } else {
            None
        };
        let backend = can_add.backend(&self.backends).clone();
        if let Disk::Writes(size) = disk {
            self.check_backend_space(backend.as_ref(), size).await?;
        }
        Ok((backend, room))
    }

    /// Whether the package can take the file `request` describes now: the tenant's, open,
    /// with room, the path free (or replaced). For refusing before bytes are sent or stored.
    pub async fn check_can_add_file(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        request: &IngestRequest,
    ) -> Result<()> {
        self.backend_for(tenant, package_id, request)
            .await
            .map(drop)
    }

    /// Whether the package is the tenant's and takes files now (open): `NotFound`, `Gone` or
    /// `Conflict` otherwise. For refusing a request before reading its body.
    pub async fn check_package_open(&self, tenant: &TenantId, package_id: PackageId) -> Result<()> {
        let client = self.pool.get().await?;
        check_open(&client, tenant, package_id, false).await?;
        Ok(())
    }
}

/// What [`check_can_add`] found.
pub(super) struct CanAdd {
    /// The file being replaced.
    pub replaced: Option<FileId>,
    /// The tenant has a byte quota.
    pub byte_quota: bool,
    /// The package's retention class and producer, which route its bytes to a backend.
    pub retention_class: String,
    pub producer: String,
}

impl CanAdd {
    /// The backend this package's new bytes go to.
    pub fn backend<'a>(
        &self,
        backends: &'a crate::storage::Backends,
    ) -> &'a std::sync::Arc<dyn BlobStore> {
        backends.route(&self.retention_class, &self.producer)
    }
}

/// Checks the package is the tenant's, open, has room, and the path is free (or may be
/// replaced), in one statement. With `lock`, the package row is locked until the transaction
/// ends, so two ingests into one package serialise their checks.
pub(super) async fn check_can_add(
    client: &impl deadpool_postgres::GenericClient,
    tenant: &TenantId,
    package_id: PackageId,
    request: &IngestRequest,
    max_files: u64,
    lock: bool,
) -> Result<CanAdd> {
    let (row, existing) = package_row(
        client,
        tenant,
        package_id,
        Some(&request.relative_path),
        lock,
    )
    .await?;
    let open = OpenPackage::from_row(package_id, &row)?;
    if existing.is_some()
        && let Some(reason) = holds(client, &[package_id.0]).await?.remove(&package_id.0)
    {
        return Err(held(package_id, &request.relative_path, &reason));
    }
    may_add_at(
        package_id,
        request,
        existing.as_ref(),
        open.file_count,
        max_files,
    )?;
    Ok(CanAdd {
        replaced: existing.map(|e| e.id),
        byte_quota: open.byte_quota,
        retention_class: open.retention_class,
        producer: open.producer,
    })
}

/// An open package (what [`check_open`] found).
pub(super) struct OpenPackage {
    pub file_count: u64,
    pub retention_class: String,
    pub producer: String,
    /// Its tenant has a byte quota.
    pub byte_quota: bool,
}

impl OpenPackage {
    fn from_row(package_id: PackageId, row: &tokio_postgres::Row) -> Result<Self> {
        must_be_open(package_id, row.get(0))?;
        Ok(OpenPackage {
            file_count: row.get::<_, i32>(1) as u64,
            retention_class: row.get(2),
            producer: row.get(3),
            byte_quota: row.get::<_, Option<bool>>(4).unwrap_or(false),
        })
    }
}

/// A package in `status` (its column value) takes new files only while open.
pub(super) fn must_be_open(package_id: PackageId, status: &str) -> Result<()> {
    match PackageStatus::parse(status)? {
        PackageStatus::Open => Ok(()),
        gone if gone.is_gone() => Err(Error::Gone(format!(
            "package {package_id} is {}; create a new package",
            gone.as_str()
        ))),
        _ => Err(Error::Conflict(format!(
            "package {package_id} is finalized and immutable; create a new package"
        ))),
    }
}

/// The file at a path of a package.
#[derive(Debug, Clone, Copy)]
pub(super) struct Existing {
    pub id: FileId,
    pub blake3: Digest,
}

/// A file may go in at `request.relative_path` of an open package holding `file_count` files,
/// where `existing` is the file already there: only as a replace (which an `If-Match`
/// precondition implies, and which it must hold for), and a new path only while there is
/// room.
pub(super) fn may_add_at(
    package_id: PackageId,
    request: &IngestRequest,
    existing: Option<&Existing>,
    file_count: u64,
    max_files: u64,
) -> Result<()> {
    if let Some(condition) = &request.if_match {
        if !condition.holds(existing.map(|e| &e.blake3)) {
            return Err(Error::PreconditionFailed(match existing {
                Some(e) => format!(
                    "the file at `{}` is \"blake3:{}\", which `If-Match` does not name",
                    request.relative_path,
                    e.blake3.to_hex()
                ),
                None => format!(
                    "package {package_id} has no file at `{}` for `If-Match` to match",
                    request.relative_path
                ),
            }));
        }
    } else if existing.is_some() && !request.replace {
        return Err(path_taken(package_id, &request.relative_path));
    }
    if existing.is_none() && file_count >= max_files {
        return Err(Error::LimitExceeded(format!(
            "package {package_id} already holds the maximum of {max_files} files"
        )));
    }
    Ok(())
}

/// The packages among `packages` under legal hold, with the hold's reason. Asked only when a
/// write would replace a file (rare), after the package rows are locked: a hold is set under
/// the same lock, so it cannot come between this read and the write's commit.
pub(super) async fn holds(
    client: &impl deadpool_postgres::GenericClient,
    packages: &[uuid::Uuid],
) -> Result<std::collections::HashMap<uuid::Uuid, String>> {
    let statement = client
        .prepare_cached(
            "SELECT package_id, coalesce(hold_reason, '') FROM retention_state \
             WHERE package_id = ANY($1) AND legal_hold",
        )
        .await?;
    Ok(client
        .query(&statement, &[&packages])
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// A legal hold keeps a package's files as they are: the file at `path` may not be replaced
/// (nor removed) until the hold is released.
pub(super) fn held(package_id: PackageId, path: &RelativePath, reason: &str) -> Error {
    Error::Conflict(format!(
        "package {package_id} is under legal hold ({}): the file at `{path}` stays as it is \
         until the hold is released",
        reason.escape_debug()
    ))
}

/// The package exists for this tenant and is open; with `lock`, its row is locked until the
/// transaction ends (adds to one package are serialised).
pub(super) async fn check_open(
    client: &impl deadpool_postgres::GenericClient,
    tenant: &TenantId,
    package_id: PackageId,
    lock: bool,
) -> Result<OpenPackage> {
    let (row, _) = package_row(client, tenant, package_id, None, lock).await?;
    OpenPackage::from_row(package_id, &row)
}

/// The package's status, file count, retention class and producer, and whether its tenant has
/// a byte quota; and the file at `path`, if asked and there is one. Prepared statements per
/// connection, as this is on every ingest's path.
///
/// The file is read by a second statement, sent with the first and run after it (one round
/// trip): with `lock`, once the package row is locked, with a snapshot that sees what the
/// transaction that held the lock before committed (a join would see the files of the first
/// statement's snapshot, and a writer that waited for the lock would miss its predecessor's
/// replacement).
async fn package_row(
    client: &impl deadpool_postgres::GenericClient,
    tenant: &TenantId,
    package_id: PackageId,
    path: Option<&RelativePath>,
    lock: bool,
) -> Result<(tokio_postgres::Row, Option<Existing>)> {
    let sql = if lock {
        "SELECT p.status, p.file_count, p.retention_class, p.producer, \
                (SELECT q.max_bytes IS NOT NULL FROM tenant_quotas q WHERE q.tenant = p.tenant) \
         FROM packages p WHERE p.id = $1 AND p.tenant = $2 FOR UPDATE OF p"
    } else {
        "SELECT p.status, p.file_count, p.retention_class, p.producer, \
                (SELECT q.max_bytes IS NOT NULL FROM tenant_quotas q WHERE q.tenant = p.tenant) \
         FROM packages p WHERE p.id = $1 AND p.tenant = $2"
    };
    let package = client.prepare_cached(sql).await?;
    let tenant = tenant.as_str();
    let package_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&package_id.0, &tenant];
    let package = client.query_opt(&package, &package_params);
    let (row, file) = match path {
        None => (package.await?, None),
        Some(path) => {
            let file = client
                .prepare_cached(
                    "SELECT id, blake3 FROM files WHERE package_id = $1 AND relative_path = $2",
                )
                .await?;
            let path = path.as_str();
            let file_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&package_id.0, &path];
            let file = client.query_opt(&file, &file_params);
            futures::try_join!(package, file)?
        }
    };
    let row = row.ok_or_else(|| Error::not_found("package", package_id))?;
    let existing = file
        .map(|f| {
            Ok::<_, Error>(Existing {
                id: FileId(f.get(0)),
                blake3: Digest::from_slice(f.get(1))
                    .map_err(|e| Error::Integrity(e.to_string()))?,
            })
        })
        .transpose()?;
    Ok((row, existing))
}

/// A file already has this path and the caller did not ask to replace it.
pub(super) fn path_taken(package_id: PackageId, path: &RelativePath) -> Error {
    Error::Conflict(format!(
        "package {package_id} already has a file at `{path}`; ask to replace it"
    ))
}

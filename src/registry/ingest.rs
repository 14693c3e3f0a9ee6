//! Streaming ingest: hash while storing, check, commit bytes, then record in one transaction.

use super::Registry;
use super::types::{FileRecord, PackageStatus};
use crate::error::{Error, Result};
use crate::events::{self, DomainEvent, FileIngested};
use crate::identity::{ContentAddress, DualDigest, DualHasher, HashPipeline};
use crate::model::{FileId, PackageId, RelativePath, TenantId, validate_label};
use crate::storage::{BlobStore, StagedBlob};
use bytes::Bytes;
use futures::{Stream, StreamExt, pin_mut};
use tokio_postgres::GenericClient;

/// One file to ingest.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// Where it goes in the package.
    pub relative_path: RelativePath,
    /// Media type; `application/octet-stream` when absent.
    pub media_type: Option<String>,
    /// If given, the bytes must have this digest (either algorithm) or nothing is kept.
    pub expected_digest: Option<ContentAddress>,
    /// Replace an existing file at the same path instead of failing with a conflict.
    pub replace: bool,
}

/// Used when a request names no media type.
pub const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

/// Checks a media type's shape: `type/subtype`, no control characters.
pub fn validate_media_type(media_type: &str) -> Result<()> {
    validate_label("media_type", media_type)?;
    let (kind, sub) = media_type.split_once('/').unwrap_or(("", ""));
    if kind.is_empty() || sub.is_empty() {
        return Err(Error::InvalidInput(format!(
            "media type `{}` must look like `type/subtype`",
            media_type.escape_debug()
        )));
    }
    Ok(())
}

impl Registry {
    /// Streams `body` into the package as `request.relative_path`.
    ///
    /// Bytes land in the backend before the transaction that references them: a crash in
    /// between leaves unreferenced bytes for garbage collection, never a reference to missing
    /// bytes. On any error nothing is recorded and the staged bytes are removed.
    pub async fn ingest_file<S>(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        request: IngestRequest,
        body: S,
    ) -> Result<FileRecord>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let media_type = request
            .media_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
        validate_media_type(&media_type)?;
        // Fail fast, before any byte is stored, on what can already be known.
        let backend = {
            let client = self.pool.get().await?;
            check_can_add(
                &**client,
                tenant,
                package_id,
                &request,
                self.limits.max_files_per_package,
                false,
            )
            .await?
            .backend(&self.backends)
            .clone()
        };
        let staged = match request.expected_digest {
            Some(address) if address.algorithm() == crate::identity::Algorithm::Blake3 => {
                backend.stage_expecting(&address).await?
            }
            _ => backend.stage().await?,
        };
        let (staged, digest) = self.stream_into(staged, body).await?;
        if let Err(e) = check_expected(&request, &digest) {
            staged.abort().await?;
            return Err(e);
        }
        let address = digest.primary_address();
        self.publish_and_record(
            tenant,
            package_id,
            request,
            media_type,
            &digest,
            backend.as_ref(),
            staged.commit(&address),
        )
        .await
    }

    /// Copies the stream into the staged write while the hashing thread digests it.
    async fn stream_into<S>(
        &self,
        mut staged: Box<dyn StagedBlob>,
        body: S,
    ) -> Result<(Box<dyn StagedBlob>, DualDigest)>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let hasher = HashPipeline::spawn(DualHasher::new());
        pin_mut!(body);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    staged.abort().await?;
                    return Err(Error::Body(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if size > self.limits.max_file_size {
                staged.abort().await?;
                return Err(Error::QuotaExceeded(format!(
                    "file exceeds the maximum file size of {} bytes",
                    self.limits.max_file_size
                )));
            }
            hasher.update(chunk.clone()).await;
            if let Err(e) = staged.write(chunk).await {
                let _ = staged.abort().await;
                return Err(e);
            }
        }
        let digest = hasher
            .finish()
            .await
            .map_err(|e| Error::Integrity(format!("hashing: {e}")))?;
        Ok((staged, digest))
    }

    /// Makes the bytes appear under their address (`publish`: a staged commit, or a backend
    /// adopting a file) and records the file, holding the blob's collection lock shared from
    /// before the bytes appear until the record commits, so garbage collection can never delete
    /// bytes an ingest is about to reference (see `gc.rs`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn publish_and_record(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        request: IngestRequest,
        media_type: String,
        digest: &DualDigest,
        backend: &dyn BlobStore,
        publish: impl std::future::Future<Output = Result<crate::storage::CommitOutcome>> + Send,
    ) -> Result<FileRecord> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        super::gc::lock_blob_shared(&tx, &digest.blake3).await?;
        // A copy verification found damaged may still look right to the backend (same size):
        // remove it first, so these good bytes replace it instead of being dropped as a dedup.
        let damaged = tx
            .query_opt(
                "SELECT 1 FROM storage_locations \
                 WHERE blake3 = $1 AND backend_id = $2 AND status = 'failed'",
                &[&digest.blake3.0.as_slice(), &backend.id()],
            )
            .await?
            .is_some();
        if damaged {
            tracing::warn!(blob = %digest.primary_address(), backend = backend.id(), "replacing a damaged copy with freshly uploaded bytes");
            backend.delete(&digest.primary_address()).await?;
        }
        publish.await?;
        let replaced = check_can_add(
            &*tx,
            tenant,
            package_id,
            &request,
            self.limits.max_files_per_package,
            true,
        )
        .await?
        .replaced;
        let event = FileIngested {
            file_id: FileId::generate(),
            package_id,
            relative_path: request.relative_path,
            size: digest.size,
            media_type,
            blake3: digest.blake3.to_hex(),
            sha256: digest.sha256.to_hex(),
            backend_id: backend.id().to_owned(),
            storage_key: digest.primary_address().storage_key(),
            replaced_file_id: replaced,
            ingested_at: self.clock.now(),
        };
        commit_file_event(tx, tenant, event, digest.blake3, digest.sha256).await
    }
}

/// Records a `v1.file.ingested` event as the last step of `tx`, commits, and returns the file.
pub(super) async fn commit_file_event(
    tx: events::Tx<'_>,
    tenant: &TenantId,
    event: FileIngested,
    blake3: crate::identity::Digest,
    sha256: crate::identity::Digest,
) -> Result<FileRecord> {
    let record = file_record(&event, blake3, sha256);
    events::record(
        &tx,
        vec![DomainEvent::FileIngested {
            tenant: tenant.clone(),
            event,
        }],
    )
    .await?;
    tx.commit().await?;
    Ok(record)
}

/// The file an ingest event makes.
pub(super) fn file_record(
    event: &FileIngested,
    blake3: crate::identity::Digest,
    sha256: crate::identity::Digest,
) -> FileRecord {
    FileRecord {
        id: event.file_id,
        package_id: event.package_id,
        relative_path: event.relative_path.clone(),
        size: event.size,
        media_type: event.media_type.clone(),
        blake3,
        sha256,
        created_at: event.ingested_at,
    }
}

pub(super) fn check_expected(request: &IngestRequest, digest: &DualDigest) -> Result<()> {
    match &request.expected_digest {
        Some(expected) if !digest.matches(expected) => Err(Error::DigestMismatch {
            expected: *expected,
            actual: match expected.algorithm() {
                crate::identity::Algorithm::Blake3 => digest.primary_address(),
                crate::identity::Algorithm::Sha256 => digest.sha256_address(),
            },
        }),
        _ => Ok(()),
    }
}

/// What [`check_can_add`] found.
pub(super) struct CanAdd {
    /// The file being replaced.
    pub replaced: Option<FileId>,
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
/// replaced). With `lock`, the package row is locked until the transaction ends, so two
/// ingests into one package serialise their checks.
pub(super) async fn check_can_add(
    client: &impl GenericClient,
    tenant: &TenantId,
    package_id: PackageId,
    request: &IngestRequest,
    max_files: u64,
    lock: bool,
) -> Result<CanAdd> {
    let open = check_open(client, tenant, package_id, lock).await?;
    let existing = client
        .query_opt(
            "SELECT id FROM files WHERE package_id = $1 AND relative_path = $2",
            &[&package_id.0, &request.relative_path.as_str()],
        )
        .await?
        .map(|r| FileId(r.get(0)));
    if existing.is_some() && !request.replace {
        return Err(path_taken(package_id, &request.relative_path));
    }
    if existing.is_none() && open.file_count >= max_files {
        return Err(Error::QuotaExceeded(format!(
            "package {package_id} already holds the maximum of {max_files} files"
        )));
    }
    Ok(CanAdd {
        replaced: existing,
        retention_class: open.retention_class,
        producer: open.producer,
    })
}

/// An open package (what [`check_open`] found).
pub(super) struct OpenPackage {
    pub file_count: u64,
    pub retention_class: String,
    pub producer: String,
}

/// The package exists for this tenant and is open; with `lock`, its row is locked until the
/// transaction ends (adds to one package are serialised).
pub(super) async fn check_open(
    client: &impl GenericClient,
    tenant: &TenantId,
    package_id: PackageId,
    lock: bool,
) -> Result<OpenPackage> {
    let sql = if lock {
        "SELECT status, file_count, retention_class, producer FROM packages \
         WHERE id = $1 AND tenant = $2 FOR UPDATE"
    } else {
        "SELECT status, file_count, retention_class, producer FROM packages \
         WHERE id = $1 AND tenant = $2"
    };
    let row = client
        .query_opt(sql, &[&package_id.0, &tenant.as_str()])
        .await?
        .ok_or_else(|| Error::not_found("package", package_id))?;
    let status = PackageStatus::parse(row.get(0))?;
    if status == PackageStatus::Expired {
        return Err(Error::Gone(format!(
            "package {package_id} has expired; create a new package"
        )));
    }
    if status != PackageStatus::Open {
        return Err(Error::Conflict(format!(
            "package {package_id} is finalized and immutable; create a new package"
        )));
    }
    Ok(OpenPackage {
        file_count: row.get::<_, i32>(1) as u64,
        retention_class: row.get(2),
        producer: row.get(3),
    })
}

/// A file already has this path and the caller did not ask to replace it.
pub(super) fn path_taken(package_id: PackageId, path: &RelativePath) -> Error {
    Error::Conflict(format!(
        "package {package_id} already has a file at `{path}`; ask to replace it"
    ))
}

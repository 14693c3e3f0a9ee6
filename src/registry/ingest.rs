//! Streaming ingest: hash while storing, check, commit bytes, then record in one transaction.

use super::Registry;
use super::types::{FileRecord, PackageStatus};
use crate::error::{Error, Result};
use crate::events::{self, DomainEvent, FileIngested};
use crate::identity::{ContentAddress, DualDigest, DualHasher, HashPipeline};
use crate::model::{FileId, PackageId, RelativePath, TenantId, validate_label};
use crate::storage::{BlobStore, StagedBlob, WriteHint};
use bytes::Bytes;
use futures::{Stream, StreamExt, pin_mut};

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

/// Bytes received into a staged write in a backend, hashed, not yet a file (see
/// [`Registry::stage_file`]).
pub struct StagedFile {
    staged: Box<dyn StagedBlob>,
    digest: DualDigest,
    backend: std::sync::Arc<dyn BlobStore>,
}

impl StagedFile {
    /// The received bytes' digests and size.
    pub fn digest(&self) -> &DualDigest {
        &self.digest
    }

    /// Removes the staged bytes.
    pub async fn discard(self) -> Result<()> {
        self.staged.abort().await
    }
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
        self.ingest_file_sized(tenant, package_id, request, body, None)
            .await
    }

    /// [`ingest_file`](Self::ingest_file) of a body announced to be `size` bytes (a request's
    /// Content-Length): a backend may then store it in one request. A body of another length
    /// fails and nothing is kept.
    pub async fn ingest_file_sized<S>(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        request: IngestRequest,
        body: S,
        size: Option<u64>,
    ) -> Result<FileRecord>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let media_type = request
            .media_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
        validate_media_type(&media_type)?;
        // Fail fast, before any byte is stored, on what can already be known (a declared size
        // past the tenant's quota included).
        let (backend, room) = self
            .admit(tenant, package_id, &request, size, Disk::Writes(size))
            .await?;
        // Only a BLAKE3 address names the place the bytes will be stored under.
        let expected = request
            .expected_digest
            .filter(|a| a.algorithm() == crate::identity::Algorithm::Blake3);
        let staged = backend.stage_with(WriteHint { size, expected }).await?;
        let (staged, digest) = self.stream_into(staged, body, room).await?;
        self.record_staged(
            tenant,
            package_id,
            request,
            StagedFile {
                staged,
                digest,
                backend,
            },
        )
        .await
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

    /// The first half of an ingest whose path is not known until its bytes have been
    /// received (a multipart form may name it after the file part): streams `body` into the
    /// backend the package's files go to, hashing it. The package must be the tenant's and
    /// open. Nothing is visible until [`record_staged`](Self::record_staged); a
    /// [`StagedFile`] dropped or [discarded](StagedFile::discard) leaves nothing.
    pub async fn stage_file<S>(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        body: S,
    ) -> Result<StagedFile>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let open = {
            let client = self.pool.get().await?;
            check_open(&client, tenant, package_id, false).await?
        };
        let room = if open.byte_quota {
            self.room_for(tenant, 0, &super::Writing::nothing()).await?
        } else {
            None
        };
        let backend = self
            .backends
            .route(&open.retention_class, &open.producer)
            .clone();
        self.check_backend_space(backend.as_ref(), None).await?;
        let staged = backend.stage().await?;
        let (staged, digest) = self.stream_into(staged, body, room).await?;
        Ok(StagedFile {
            staged,
            digest,
            backend,
        })
    }

    /// The second half: records staged bytes as the file `request` describes, with every
    /// check of [`ingest_file`](Self::ingest_file) (expected digest, media type, the package
    /// open, the path free or replaced). On any error nothing is kept.
    pub async fn record_staged(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        request: IngestRequest,
        file: StagedFile,
    ) -> Result<FileRecord> {
        let StagedFile {
            mut staged,
            digest,
            backend,
        } = file;
        let media_type = request
            .media_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
        let checked = match validate_media_type(&media_type)
            .and_then(|()| check_expected(&request, &digest))
        {
            // Before any byte is published: the package may have been finalized or filled,
            // or the path taken, while the bytes arrived.
            Ok(()) => self.check_can_add_file(tenant, package_id, &request).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            staged.abort().await?;
            return Err(e);
        }
        let address = digest.primary_address();
        // The slow part of storing (an fsync) before any lock is taken.
        if let Err(e) = staged.prepare(&address).await {
            let _ = staged.abort().await;
            return Err(e);
        }
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

    /// Copies the stream into the staged write while the hashing thread digests it, stopping
    /// at the largest file size, and at the room the tenant's byte quota leaves.
    async fn stream_into<S>(
        &self,
        mut staged: Box<dyn StagedBlob>,
        body: S,
        room: Option<super::Room>,
    ) -> Result<(Box<dyn StagedBlob>, DualDigest)>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let mut hasher = HashPipeline::new(DualHasher::new());
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
                return Err(Error::LimitExceeded(format!(
                    "file exceeds the maximum file size of {} bytes",
                    self.limits.max_file_size
                )));
            }
            if let Some(room) = room
                && size > room.left()
            {
                staged.abort().await?;
                return Err(room.refusal());
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
    /// bytes an ingest is about to reference (see `gc.rs`). Small files are recorded by the
    /// group committer (`group.rs`), which keeps the same protocol for a whole batch.
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
        let mut event = FileIngested {
            file_id: FileId::generate(),
            package_id,
            relative_path: request.relative_path.clone(),
            size: digest.size,
            media_type,
            blake3: digest.blake3.to_hex(),
            sha256: digest.sha256.to_hex(),
            backend_id: backend.id().to_owned(),
            storage_key: digest.primary_address().storage_key(),
            replaced_file_id: None,
            ingested_at: self.clock.now(),
        };
        if digest.size <= super::group::GROUP_MAX_BYTES {
            return self
                .record_in_group(tenant, request, event, digest, backend, publish)
                .await;
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // A copy verification found damaged may still look right to the backend (same size):
        // remove it first, so these good bytes replace it instead of being dropped as a dedup.
        // The check is sent behind the lock in one round trip (pipelined, executed in order).
        let damaged = tx
            .prepare_cached(
                "SELECT 1 FROM storage_locations \
                 WHERE blake3 = $1 AND backend_id = $2 AND status = 'failed'",
            )
            .await?;
        let blake3 = digest.blake3.0.as_slice();
        let backend_id = backend.id();
        super::gc::prepare_blob_locks(&tx).await?;
        let ((), damaged) =
            futures::try_join!(super::gc::lock_blob_shared(&tx, &digest.blake3), async {
                Ok(tx
                    .query_opt(&damaged, &[&blake3, &backend_id])
                    .await?
                    .is_some())
            })?;
        if damaged {
            remove_damaged(backend, digest).await?;
        }
        publish.await?;
        event.replaced_file_id = check_can_add(
            &tx,
            tenant,
            package_id,
            &request,
            self.limits.max_files_per_package,
            true,
        )
        .await?
        .replaced;
        commit_file_event(tx, tenant, event, digest.blake3, digest.sha256).await
    }

    /// [`publish_and_record`](Self::publish_and_record) through the group committer: wait
    /// until a batch holds the blob's lock, publish, then wait for the batch to commit.
    async fn record_in_group(
        &self,
        tenant: &TenantId,
        request: IngestRequest,
        event: FileIngested,
        digest: &DualDigest,
        backend: &dyn BlobStore,
        publish: impl std::future::Future<Output = Result<crate::storage::CommitOutcome>> + Send,
    ) -> Result<FileRecord> {
        let stopped = || Error::Database("the ingest committer stopped".into());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        let item = super::group::Item {
            tenant: tenant.clone(),
            request,
            event,
            blake3: digest.blake3,
            sha256: digest.sha256,
            max_files: self.limits.max_files_per_package,
        };
        self.committer.submit(
            &self.pool,
            &self.backends,
            super::group::Pending { item, go: go_tx },
        )?;
        let go = go_rx.await.map_err(|_| stopped())??;
        let published = async {
            if go.damaged {
                remove_damaged(backend, digest).await?;
            }
            publish.await
        }
        .await;
        match published {
            Ok(_) => {
                let _ = go.published.send(Ok(()));
            }
            Err(e) => {
                let _ = go.published.send(Err(()));
                return Err(e);
            }
        }
        go.done.await.map_err(|_| stopped())?
    }
}

/// A copy verification found damaged may still look right to the backend (same size): it is
/// removed first, so fresh bytes replace it instead of being dropped as a dedup.
async fn remove_damaged(backend: &dyn BlobStore, digest: &DualDigest) -> Result<()> {
    tracing::warn!(blob = %digest.primary_address(), backend = backend.id(), "replacing a damaged copy with freshly uploaded bytes");
    backend.delete(&digest.primary_address()).await
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
    let added = super::quota::Added {
        tenant: tenant.clone(),
        bytes: event.size,
        packages: 0,
        files: vec![(event.package_id.0, event.relative_path.as_str().to_owned())],
    };
    let now = event.ingested_at;
    events::record(
        &tx,
        vec![DomainEvent::FileIngested {
            tenant: tenant.clone(),
            event,
        }],
    )
    .await?;
    super::quota::enforce(&tx, &[added], now).await?;
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
    let row = package_row(
        client,
        tenant,
        package_id,
        Some(&request.relative_path),
        lock,
    )
    .await?;
    let open = OpenPackage::from_row(package_id, &row)?;
    let existing = row.get::<_, Option<uuid::Uuid>>(4).map(FileId);
    may_add_at(package_id, request, existing, open.file_count, max_files)?;
    Ok(CanAdd {
        replaced: existing,
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
            byte_quota: row.get::<_, Option<bool>>(5).unwrap_or(false),
        })
    }
}

/// A package in `status` (its column value) takes new files only while open.
pub(super) fn must_be_open(package_id: PackageId, status: &str) -> Result<()> {
    match PackageStatus::parse(status)? {
        PackageStatus::Open => Ok(()),
        PackageStatus::Expired => Err(Error::Gone(format!(
            "package {package_id} has expired; create a new package"
        ))),
        _ => Err(Error::Conflict(format!(
            "package {package_id} is finalized and immutable; create a new package"
        ))),
    }
}

/// A file may go in at `request.relative_path` of an open package holding `file_count` files,
/// where `existing` is the file already there: only as a replace, and a new path only while
/// there is room.
pub(super) fn may_add_at(
    package_id: PackageId,
    request: &IngestRequest,
    existing: Option<FileId>,
    file_count: u64,
    max_files: u64,
) -> Result<()> {
    if existing.is_some() && !request.replace {
        return Err(path_taken(package_id, &request.relative_path));
    }
    if existing.is_none() && file_count >= max_files {
        return Err(Error::LimitExceeded(format!(
            "package {package_id} already holds the maximum of {max_files} files"
        )));
    }
    Ok(())
}

/// The package exists for this tenant and is open; with `lock`, its row is locked until the
/// transaction ends (adds to one package are serialised).
pub(super) async fn check_open(
    client: &impl deadpool_postgres::GenericClient,
    tenant: &TenantId,
    package_id: PackageId,
    lock: bool,
) -> Result<OpenPackage> {
    let row = package_row(client, tenant, package_id, None, lock).await?;
    OpenPackage::from_row(package_id, &row)
}

/// The package's status, file count, retention class and producer, and the id of its file at
/// `path` (NULL without a path, or when there is none); a prepared statement per connection,
/// as this is on every ingest's path.
async fn package_row(
    client: &impl deadpool_postgres::GenericClient,
    tenant: &TenantId,
    package_id: PackageId,
    path: Option<&RelativePath>,
    lock: bool,
) -> Result<tokio_postgres::Row> {
    let sql = if lock {
        "SELECT p.status, p.file_count, p.retention_class, p.producer, \
                (SELECT f.id FROM files f WHERE f.package_id = p.id AND f.relative_path = $3), \
                (SELECT q.max_bytes IS NOT NULL FROM tenant_quotas q WHERE q.tenant = p.tenant) \
         FROM packages p WHERE p.id = $1 AND p.tenant = $2 FOR UPDATE OF p"
    } else {
        "SELECT p.status, p.file_count, p.retention_class, p.producer, \
                (SELECT f.id FROM files f WHERE f.package_id = p.id AND f.relative_path = $3), \
                (SELECT q.max_bytes IS NOT NULL FROM tenant_quotas q WHERE q.tenant = p.tenant) \
         FROM packages p WHERE p.id = $1 AND p.tenant = $2"
    };
    let statement = client.prepare_cached(sql).await?;
    client
        .query_opt(
            &statement,
            &[
                &package_id.0,
                &tenant.as_str(),
                &path.map(RelativePath::as_str),
            ],
        )
        .await?
        .ok_or_else(|| Error::not_found("package", package_id))
}

/// A file already has this path and the caller did not ask to replace it.
pub(super) fn path_taken(package_id: PackageId, path: &RelativePath) -> Error {
    Error::Conflict(format!(
        "package {package_id} already has a file at `{path}`; ask to replace it"
    ))
}

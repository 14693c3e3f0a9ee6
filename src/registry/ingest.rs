//! Streaming ingest: hash while storing, check, commit bytes, then record in one transaction.

use super::Registry;
use super::admission::{Disk, check_can_add, check_open};
use super::record::commit_file_event;
use super::types::{FileRecord, IngestRequest};
use crate::domain::{FileId, PackageId, TenantId, validate_label};
use crate::error::{Error, Result};
use crate::events::FileIngested;
use crate::identity::{DualDigest, DualHasher, HashPipeline};
use crate::metrics::IngestOutcome;
use crate::storage::{BlobStore, StagedBlob, WriteHint};
use bytes::Bytes;
use futures::{Stream, StreamExt, pin_mut};

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

/// Counts a failed ingest (see [`INGESTS`](crate::metrics::INGESTS)); successes are counted
/// where the bytes are published, as stored or deduplicated.
pub(super) fn counted<T>(result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        crate::metrics::ingest_error(e);
    }
    result
}

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
        counted(
            self.ingest_sized_uncounted(tenant, package_id, request, body, size)
                .await,
        )
    }

    pub(super) async fn ingest_sized_uncounted<S>(
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
        self.record_staged_uncounted(
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
        counted(self.stage_uncounted(tenant, package_id, body).await)
    }

    async fn stage_uncounted<S>(
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
        counted(
            self.record_staged_uncounted(tenant, package_id, request, file)
                .await,
        )
    }

    async fn record_staged_uncounted(
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
    /// group committer (`group_commit.rs`), which keeps the same protocol for a whole batch.
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
        let deduplicated = std::sync::atomic::AtomicBool::new(false);
        let publish = async {
            let outcome = publish.await?;
            if outcome == crate::storage::CommitOutcome::AlreadyPresent {
                deduplicated.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(outcome)
        };
        let record = self
            .publish_and_record_uncounted(
                tenant, package_id, request, media_type, digest, backend, publish,
            )
            .await?;
        let outcome = if deduplicated.load(std::sync::atomic::Ordering::Relaxed) {
            IngestOutcome::Deduplicated
        } else {
            IngestOutcome::Stored
        };
        crate::metrics::ingest(outcome, record.size);
        Ok(record)
    }

    #[allow(clippy::too_many_arguments)]
    async fn publish_and_record_uncounted(
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
        if digest.size <= super::group_commit::GROUP_MAX_BYTES {
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
        super::blob_lock::prepare_blob_locks(&tx).await?;
        let ((), damaged) = futures::try_join!(
            super::blob_lock::lock_blob_shared(&tx, &digest.blake3),
            async {
                Ok(tx
                    .query_opt(&damaged, &[&blake3, &backend_id])
                    .await?
                    .is_some())
            }
        )?;
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
        commit_file_event(
            tx,
            tenant,
            event,
            digest.blake3,
            digest.sha256,
            &self.sequencer,
        )
        .await
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
        let item = super::group_commit::BatchFile {
            tenant: tenant.clone(),
            request,
            event,
            blake3: digest.blake3,
            sha256: digest.sha256,
            max_files: self.limits.max_files_per_package,
        };
        self.committer.submit(
            self.limits.group_committers,
            &self.pool,
            &self.backends,
            &self.sequencer,
            super::group_commit::Queued { item, go: go_tx },
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

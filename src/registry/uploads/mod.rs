//! Resumable upload sessions: bytes arrive in chunks over many requests, then become a file.
//!
//! Chunks are appended to a spool file per session (local disk of the server), one writer at a
//! time (an exclusive `flock` on the spool file). The session's offset in PostgreSQL only moves
//! after the chunk is on disk (fsync), so after any crash the spool is truncated back to the
//! recorded offset and the client resumes from `GET /uploads/{id}`.
//!
//! Completion takes the same lock and marks the session `completing` before it moves a byte;
//! a chunk checks that state under the lock before it writes one. So a chunk never lands in a
//! spool that completion has made into a published blob (the local backend adopts the spool
//! file itself, by a rename): it is refused, 409 while completion runs, 404 after.
//!
//! The bytes are hashed as they are spooled, and for a backend that wants them as they arrive
//! (S3) they also stream into a staged write there ([`live`]). Completion then checks the
//! digest and commits that write, or, without it, lets the backend adopt the spool file. A
//! process that does not hold the session's state (a restart) streams the spool through the
//! ordinary ingest instead, so the digests are always computed over exactly the bytes kept,
//! whatever happened in between.

mod live;
mod spool;

pub use live::WriteThroughStats;
use live::{LiveUpload, WriteThrough};
pub(crate) use live::{LiveUploads, WriteThroughSlots};
use spool::Spool;

use super::Registry;
use super::admission::check_can_add;
use super::ingest::{DEFAULT_MEDIA_TYPE, validate_media_type};
use super::types::FileRecord;
use crate::domain::{PackageId, RelativePath, TenantId, Timestamp};
use crate::error::{Error, Result};
use crate::identity::{ContentAddress, DualHasher, HashPipeline};
use bytes::Bytes;
use futures::{Stream, StreamExt, pin_mut};
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use uuid::Uuid;

/// What a new session needs.
#[derive(Debug, Clone)]
pub struct NewUpload {
    /// Target package.
    pub package_id: PackageId,
    /// Path inside the package.
    pub relative_path: RelativePath,
    /// Media type of the file.
    pub media_type: Option<String>,
    /// Total size, if known up front.
    pub size: Option<u64>,
    /// Digest the complete bytes must have.
    pub expected_digest: Option<ContentAddress>,
    /// Replace an existing file at the path.
    pub replace: bool,
}

/// A session's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// Id.
    pub id: Uuid,
    /// Target package.
    pub package_id: PackageId,
    /// Path inside the package.
    pub relative_path: RelativePath,
    /// Bytes received so far: the offset the next chunk must start at.
    pub offset: u64,
    /// Declared total size, if known.
    pub size: Option<u64>,
    /// When the session is abandoned if not completed.
    pub expires_at: Timestamp,
}

/// One chunk: `start` must equal the session's offset; `total` fixes the size if given.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    /// First byte position.
    pub start: u64,
    /// Last byte position (inclusive), if the client said; the body must match it.
    pub end: Option<u64>,
    /// Total size of the upload, if known.
    pub total: Option<u64>,
}

const SELECT: &str = "SELECT id, package_id, relative_path, received, declared_size, expires_at, \
                      media_type, expected_digest, replace, state FROM uploads";

struct Row {
    session: UploadSession,
    media_type: Option<String>,
    expected_digest: Option<String>,
    replace: bool,
    /// Being completed: takes no more chunks.
    completing: bool,
}

fn row(r: &tokio_postgres::Row) -> Result<Row> {
    Ok(Row {
        session: UploadSession {
            id: r.get(0),
            package_id: PackageId(r.get(1)),
            relative_path: RelativePath::stored(r.get(2))?,
            offset: r.get::<_, i64>(3) as u64,
            size: r.get::<_, Option<i64>>(4).map(|s| s as u64),
            expires_at: Timestamp::from_datetime(r.get(5)),
        },
        media_type: r.get(6),
        expected_digest: r.get(7),
        replace: r.get(8),
        completing: r.get::<_, &str>(9) == "completing",
    })
}

/// A spool write's failure: a full disk is the server's insufficient storage (507), anything
/// else a storage fault.
fn spool_error(what: &str, e: std::io::Error) -> Error {
    if crate::storage::local::is_out_of_space(&e) {
        Error::InsufficientStorage(format!("the upload spools' disk is full ({what})"))
    } else {
        Error::storage("uploads", format!("{what}: {e}"))
    }
}

/// The session's spool file, locked exclusively (`None` if it is gone): a chunk or a
/// completion holds it for its whole run, and whoever finds it held is refused at once.
fn lock_spool(
    path: &std::path::Path,
    id: Uuid,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::storage(
                "uploads",
                format!("opening spool file: {e}"),
            ));
        }
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(Some)
        .map_err(|_| {
            Error::Conflict(format!(
                "upload {id} is busy: a chunk is being received or the upload is being \
                 completed; retry after it"
            ))
        })
}

/// What completing a session asks of the ingest: its path, media type, expected digest.
fn ingest_request(current: &Row) -> Result<super::IngestRequest> {
    let expected = current
        .expected_digest
        .as_deref()
        .map(|d| {
            d.parse::<ContentAddress>()
                .map_err(|e| Error::Integrity(e.to_string()))
        })
        .transpose()?;
    Ok(super::IngestRequest {
        relative_path: current.session.relative_path.clone(),
        media_type: Some(
            current
                .media_type
                .clone()
                .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into()),
        ),
        expected_digest: expected,
        replace: current.replace,
    })
}

impl Registry {
    fn spool_path(&self, id: Uuid) -> PathBuf {
        self.upload_dir.join(id.to_string())
    }

    async fn load_upload(&self, tenant: &TenantId, id: Uuid) -> Result<Row> {
        let client = self.pool.get().await?;
        let found = client
            .query_opt(
                &format!("{SELECT} WHERE id = $1 AND tenant = $2"),
                &[&id, &tenant.as_str()],
            )
            .await?
            .ok_or_else(|| Error::not_found("upload", id))?;
        let found = row(&found)?;
        if found.session.expires_at <= self.clock.now() {
            return Err(Error::NotFound {
                what: format!("upload {id} (it expired; start a new one)"),
            });
        }
        Ok(found)
    }

    /// Opens a session. The package must be the tenant's and open, and the path free (unless
    /// `replace`); a declared size over the limit is refused up front.
    pub async fn create_upload(&self, tenant: &TenantId, new: NewUpload) -> Result<UploadSession> {
        if let Some(media_type) = &new.media_type {
            validate_media_type(media_type)?;
        }
        if let Some(size) = new.size
            && size > self.limits.max_file_size
        {
            return Err(Error::LimitExceeded(format!(
                "the declared size {size} exceeds the maximum file size of {} bytes",
                self.limits.max_file_size
            )));
        }
        let request = super::IngestRequest {
            relative_path: new.relative_path.clone(),
            media_type: new.media_type.clone(),
            expected_digest: new.expected_digest,
            replace: new.replace,
        };
        let client = self.pool.get().await?;
        check_can_add(
            &client,
            tenant,
            new.package_id,
            &request,
            self.limits.max_files_per_package,
            false,
        )
        .await?;
        let id = Uuid::now_v7();
        let now = self.clock.now();
        let expires_at = now
            .plus_seconds(self.limits.upload_ttl_seconds as i64)
            .ok_or_else(|| Error::InvalidInput("upload lifetime overflows".into()))?;
        // The session's bytes will be spooled here first.
        self.check_spool_space(new.size).await?;
        let path = self.spool_path(id);
        tokio::fs::create_dir_all(&self.upload_dir)
            .await
            .map_err(|e| spool_error("creating spool directory", e))?;
        tokio::fs::File::create(&path)
            .await
            .map_err(|e| spool_error("creating spool file", e))?;
        let recorded = self
            .insert_upload(client, tenant, id, &new, now, expires_at)
            .await;
        if recorded.is_err() {
            // Refused (a quota) or not recorded: no spool without its session.
            let _ = tokio::fs::remove_file(&path).await;
        }
        recorded?;
        Ok(UploadSession {
            id,
            package_id: new.package_id,
            relative_path: new.relative_path,
            offset: 0,
            size: new.size,
            expires_at,
        })
    }

    /// Records the session `id` (admitted under the tenant's quotas first).
    async fn insert_upload(
        &self,
        mut client: deadpool_postgres::Object,
        tenant: &TenantId,
        id: Uuid,
        new: &NewUpload,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()> {
        let size = new.size.map(|s| s as i64);
        let expected = new.expected_digest.map(|d| d.to_string());
        let tx = client.transaction().await?;
        // Within the tenant's quotas: its sessions, and its bytes with this one's reserved.
        self.admit_session(&tx, tenant, new.size).await?;
        tx.execute(
                "INSERT INTO uploads (id, tenant, package_id, relative_path, media_type, declared_size, \
                                      expected_digest, replace, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &id,
                    &tenant.as_str(),
                    &new.package_id.0,
                    &new.relative_path.as_str(),
                    &new.media_type,
                    &size,
                    &expected,
                    &new.replace,
                    &now.as_datetime(),
                    &expires_at.as_datetime(),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A session's state (for resuming).
    pub async fn get_upload(&self, tenant: &TenantId, id: Uuid) -> Result<UploadSession> {
        Ok(self.load_upload(tenant, id).await?.session)
    }

    /// Appends a chunk. `chunk.start` must equal the current offset (else `OffsetMismatch`).
    /// If the body breaks off, the bytes that arrived are kept and the offset says how many.
    pub async fn append_upload<S>(
        &self,
        tenant: &TenantId,
        id: Uuid,
        chunk: Chunk,
        body: S,
    ) -> Result<UploadSession>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let current = self.load_upload(tenant, id).await?;
        let (size, limit) = self.chunk_bounds(current.session.size, &chunk)?;
        // The chunk's bytes go to the spool's disk.
        self.check_spool_space(chunk.end.map(|end| end.saturating_sub(chunk.start) + 1))
            .await?;
        let Locked { file, offset, room } = self.lock_for_chunk(tenant, id, &chunk, size).await?;
        let mut file = file;
        // Drop anything a chunk that died before recording its progress left behind.
        file.set_len(offset)
            .map_err(|e| Error::storage("uploads", format!("truncating spool: {e}")))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::storage("uploads", e))?;

        // Hash as we spool, continuing this session's state when this process has it (a
        // state for another offset is stale: another process took the session over).
        let live = self.live_uploads.lock().expect("live uploads").remove(&id);
        let (hasher, mut through) = match live {
            Some(live) if live.received == offset => (Some(live.hasher), live.through),
            _ if offset == 0 => (Some(DualHasher::new()), None),
            _ => (None, None),
        };
        if offset == 0 && through.is_none() {
            through = self.start_write_through(tenant, &current, size).await;
        }
        let mut intake = Intake {
            id,
            spool: Spool::new(file, offset),
            pipeline: hasher.map(HashPipeline::new),
            through,
            offset,
            received: offset,
            hashed: 0,
            room,
            limit,
            size,
            max_file_size: self.limits.max_file_size,
        };
        let mut failure = intake.receive(body).await;
        if failure.is_none()
            && let Some(end) = chunk.end
            && intake.received != end + 1
        {
            failure = Some(Error::InvalidInput(format!(
                "Content-Range ends at byte {end}, but the body ended at byte {}",
                intake.received as i128 - 1
            )));
            intake.received = offset;
        }
        let received = intake.received;
        self.keep_progress(intake, size).await?;
        match failure {
            Some(e) => Err(e),
            None => {
                let mut session = current.session;
                session.offset = received;
                session.size = size;
                Ok(session)
            }
        }
    }

    /// The session's size (declared, or said by this chunk's `Content-Range`) and the most
    /// bytes it may hold.
    fn chunk_bounds(&self, declared: Option<u64>, chunk: &Chunk) -> Result<(Option<u64>, u64)> {
        let size = match (declared, chunk.total) {
            (Some(declared), Some(total)) if declared != total => {
                return Err(Error::InvalidInput(format!(
                    "Content-Range says the total is {total}, but the upload was declared as {declared} bytes"
                )));
            }
            (declared, total) => declared.or(total),
        };
        let max = self.limits.max_file_size;
        if size.is_some_and(|s| s > max) {
            return Err(Error::LimitExceeded(format!(
                "the upload's size exceeds the maximum file size of {max} bytes"
            )));
        }
        Ok((size, size.unwrap_or(max).min(max)))
    }

    /// Takes the session's spool for one chunk: one writer per session, across requests and
    /// processes (completion takes it too), then checks, under the lock, that the session
    /// still takes chunks here at `chunk.start`, and reserves what an undeclared size brings.
    async fn lock_for_chunk(
        &self,
        tenant: &TenantId,
        id: Uuid,
        chunk: &Chunk,
        size: Option<u64>,
    ) -> Result<Locked> {
        let locked = lock_spool(&self.spool_path(id), id)?;
        // Re-read under the lock: the offset may have moved, the session may be completing or
        // gone (its spool published, or removed).
        let under_lock = self.load_upload(tenant, id).await?;
        if under_lock.completing {
            return Err(Error::Conflict(format!(
                "upload {id} is being completed and takes no more chunks (if that completion \
                 was cut short, complete it again)"
            )));
        }
        let Some(file) = locked else {
            return Err(Error::Conflict(format!(
                "the bytes of upload {id} are not on this server; start a new upload"
            )));
        };
        let offset = under_lock.session.offset;
        if chunk.start != offset {
            return Err(Error::OffsetMismatch { offset });
        }
        // A session that declared its size reserved it (admitted at creation); one that did
        // not reserves what it holds, so each chunk must fit the tenant's byte quota: what the
        // chunk says it brings is reserved under the quota lock, and its bytes are checked as
        // they arrive.
        let room = if under_lock.session.size.is_none() {
            let coming = size.or(chunk.end.map(|end| end + 1)).unwrap_or(offset);
            self.reserve_chunk(tenant, id, coming).await?
        } else {
            None
        };
        Ok(Locked { file, offset, room })
    }

    /// Records how far the session got and keeps its hashing state for the next chunk, if
    /// the state covers exactly the bytes kept.
    async fn keep_progress(&self, intake: Intake, size: Option<u64>) -> Result<()> {
        let Intake {
            id,
            spool,
            pipeline,
            mut through,
            offset,
            received,
            hashed,
            ..
        } = intake;
        let file = spool
            .finish(received)
            .await
            .map_err(|e| spool_error("syncing spool", e))?;
        if let Some(p) = pipeline {
            let hasher = p
                .finish_state()
                .await
                .map_err(|e| Error::Integrity(format!("hashing: {e}")))?;
            // Keep the state only if it covers exactly the bytes kept (a write-through that
            // has more, from a chunk the spool dropped, is given up).
            if offset + hashed == received {
                let through = through.take().filter(|t| t.written() == received);
                self.live_uploads.lock().expect("live uploads").insert(
                    id,
                    LiveUpload {
                        received,
                        hasher,
                        through,
                        touched: self.clock.now(),
                    },
                );
            }
        }
        let declared = size.map(|s| s as i64);
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE uploads SET received = $2, reserved = 0, \
                                    declared_size = COALESCE(declared_size, $3) \
                 WHERE id = $1",
                &[&id, &(received as i64), &declared],
            )
            .await?;
        drop(file);
        Ok(())
    }

    /// Turns the received bytes into a file (checking size and any expected digest). On a
    /// digest mismatch nothing is kept: the session and its bytes are removed. A failure that
    /// may pass (the backend or the database unavailable) keeps the session, to complete again.
    ///
    /// Runs under the spool's lock, with the session marked `completing` first, so no chunk
    /// writes into the spool meanwhile or after (a chunk in flight makes this a conflict).
    pub async fn complete_upload(&self, tenant: &TenantId, id: Uuid) -> Result<FileRecord> {
        self.load_upload(tenant, id).await?;
        let path = self.spool_path(id);
        let Some(lock) = lock_spool(&path, id)? else {
            // Another completion has moved the spool into place (and may still be recording
            // the file), or the bytes are not on this server's disk. Either way nothing here is
            // this request's to complete or to remove; the session expires in its time.
            return Err(Error::Conflict(format!(
                "upload {id} is being completed, or its bytes are not on this server; if no \
                 file appears, start a new upload"
            )));
        };
        let current = self.mark_completing(tenant, id).await?;
        let result = self.complete_locked(tenant, &current).await;
        if result.is_err() {
            // Not completed. A session that was kept (missing bytes, an outage) takes chunks
            // again; one that was removed is untouched by this.
            if let Ok(client) = self.pool.get().await {
                let _ = client
                    .execute("UPDATE uploads SET state = 'open' WHERE id = $1", &[&id])
                    .await;
            }
        }
        drop(lock);
        result
    }

    /// Marks the session `completing` (under its spool's lock) and returns it as it is now.
    async fn mark_completing(&self, tenant: &TenantId, id: Uuid) -> Result<Row> {
        let client = self.pool.get().await?;
        let found = client
            .query_opt(
                &format!(
                    "UPDATE uploads SET state = 'completing' \
                     WHERE id = $1 AND tenant = $2 AND expires_at > $3 \
                     RETURNING {}",
                    SELECT
                        .trim_start_matches("SELECT ")
                        .trim_end_matches(" FROM uploads")
                ),
                &[&id, &tenant.as_str(), &self.clock.now().as_datetime()],
            )
            .await?
            .ok_or_else(|| Error::not_found("upload", id))?;
        row(&found)
    }

    async fn complete_locked(&self, tenant: &TenantId, current: &Row) -> Result<FileRecord> {
        let id = current.session.id;
        if let Some(size) = current.session.size
            && size != current.session.offset
        {
            return Err(Error::Conflict(format!(
                "upload {id} has {} of its {size} bytes; send the rest before completing",
                current.session.offset
            )));
        }
        let request = ingest_request(current)?;
        let path = self.spool_path(id);
        let live = self.live_uploads.lock().expect("live uploads").remove(&id);
        if let Some(live) = live
            && live.received == current.session.offset
        {
            return self
                .complete_hashed(
                    tenant,
                    current,
                    request,
                    live.hasher.finalize(),
                    live.through,
                )
                .await;
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::storage("uploads", format!("opening spool file: {e}")))?;
        let body =
            crate::storage::local::file_stream(file.into_std().await, current.session.offset);
        let result = self
            .ingest_file_sized(
                tenant,
                current.session.package_id,
                request,
                body,
                Some(current.session.offset),
            )
            .await;
        match &result {
            Ok(_) | Err(Error::DigestMismatch { .. }) => self.remove_upload(id).await?,
            Err(_) => {}
        }
        result
    }

    /// Completion when the digest is already known: the bytes written through to the backend
    /// are committed, or else the backend adopts the spool file (a rename on the local
    /// backend) instead of reading and writing the bytes again. A failure that may pass (the
    /// backend or the database unavailable, no room under the quota or on the disk) keeps the
    /// session and its spooled bytes, so the client can complete again later; any other
    /// failure ends the session.
    async fn complete_hashed(
        &self,
        tenant: &TenantId,
        current: &Row,
        request: super::IngestRequest,
        digest: crate::identity::DualDigest,
        through: Option<WriteThrough>,
    ) -> Result<FileRecord> {
        let id = current.session.id;
        if let Err(e) = super::ingest::check_expected(&request, &digest) {
            self.remove_upload(id).await?;
            return Err(e);
        }
        let package_id = current.session.package_id;
        let spool = self.spool_path(id);
        // Refuse before moving any bytes if the file can no longer be added, or would pass the
        // tenant's byte quota (the session's own reservation is the file's).
        let (backend, _) = self
            .admit(
                tenant,
                package_id,
                &request,
                Some(digest.size),
                super::admission::Disk::Unchecked,
            )
            .await?;
        // A write-through counts only if it went to this very backend and has every byte.
        let through =
            through.filter(|t| t.backend().id() == backend.id() && t.written() == digest.size);
        // New bytes on this server's disk only if the spool is copied (another filesystem).
        if through.is_none() && !backend.adopts_in_place(&spool).await {
            self.check_backend_space(backend.as_ref(), Some(digest.size))
                .await?;
        }
        let media_type = request
            .media_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
        let address = digest.primary_address();
        let publish = async {
            if let Some(through) = through {
                match through.commit(&address).await {
                    Ok(outcome) => return Ok(outcome),
                    Err(e) => tracing::warn!(upload = %id, backend = backend.id(), error = %e,
                        "committing the bytes written through failed; storing the spooled file"),
                }
            }
            backend.adopt_file(&spool, &address).await
        };
        let record = self
            .publish_and_record(
                tenant,
                package_id,
                request,
                media_type,
                &digest,
                backend.as_ref(),
                publish,
            )
            .await;
        // Kept while its bytes are: an outage may pass, and room may be made (files deleted,
        // a quota raised, the disk freed).
        let retry_later = matches!(&record, Err(e) if e.is_retryable()
                || matches!(e, Error::OverQuota { .. } | Error::InsufficientStorage(_)))
            && tokio::fs::try_exists(&spool).await.unwrap_or(false);
        if !retry_later {
            self.remove_upload(id).await?;
        }
        record
    }

    /// A staged write into the backend the session's bytes will be stored in, when the
    /// backend wants its bytes as they arrive (S3) and the size is known; else `None`.
    async fn start_write_through(
        &self,
        tenant: &TenantId,
        current: &Row,
        size: Option<u64>,
    ) -> Option<WriteThrough> {
        let size = size?;
        // No package lookup for sessions that could not write through anyway (the local
        // backend alone, or write-through switched off).
        if !self.write_through.enabled()
            || !self
                .backends
                .all()
                .iter()
                .any(|b| live::writes_through(b.as_ref(), size))
        {
            return None;
        }
        let request = ingest_request(current).ok()?;
        // A package that can no longer take the file gets no write-through; completion will
        // say why.
        let backend = self
            .backend_for(tenant, current.session.package_id, &request)
            .await
            .ok()?;
        // Only a BLAKE3 address names the place the bytes will be stored under.
        let expected = request
            .expected_digest
            .filter(|a| a.algorithm() == crate::identity::Algorithm::Blake3);
        let idle_since = self.clock.now().plus_seconds(-live::IDLE_SECONDS)?;
        let free_idle = || live::give_up_idle(&self.live_uploads, idle_since);
        self.write_through
            .start(backend, size, expected, current.session.id, free_idle)
            .await
    }

    /// Cancels a session and removes its bytes.
    /// Not while a chunk is being received or the upload completed (409): whichever runs
    /// holds the spool's lock.
    pub async fn cancel_upload(&self, tenant: &TenantId, id: Uuid) -> Result<()> {
        let current = self.load_upload(tenant, id).await?;
        let lock = lock_spool(&self.spool_path(id), id)?;
        if lock.is_none() && current.completing {
            // A completion moved the spool into place and is recording the file.
            return Err(Error::Conflict(format!(
                "upload {id} is being completed; it can no longer be cancelled"
            )));
        }
        let result = self.remove_upload(id).await;
        drop(lock);
        result
    }

    async fn remove_upload(&self, id: Uuid) -> Result<()> {
        self.live_uploads.lock().expect("live uploads").remove(&id);
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM uploads WHERE id = $1", &[&id])
            .await?;
        match tokio::fs::remove_file(self.spool_path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::storage(
                "uploads",
                format!("removing spool file: {e}"),
            )),
        }
    }

    /// Removes sessions past their expiry and their bytes, and spool files no session owns.
    /// A session a chunk or a completion is working on (its spool locked) is left for the
    /// next sweep. Returns how many sessions were removed.
    pub async fn expire_uploads(&self) -> Result<u64> {
        let now = self.clock.now().as_datetime();
        let client = self.pool.get().await?;
        let expired: Vec<Uuid> = client
            .query("SELECT id FROM uploads WHERE expires_at <= $1", &[&now])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut removed = 0;
        for id in expired {
            let lock = match lock_spool(&self.spool_path(id), id) {
                Ok(lock) => lock,
                Err(Error::Conflict(_)) => continue,
                Err(e) => {
                    tracing::warn!(upload = %id, error = %e, "cannot expire an upload session now");
                    continue;
                }
            };
            let gone = client
                .execute(
                    "DELETE FROM uploads WHERE id = $1 AND expires_at <= $2",
                    &[&id, &now],
                )
                .await?;
            if gone == 1 {
                self.live_uploads.lock().expect("live uploads").remove(&id);
                let _ = tokio::fs::remove_file(self.spool_path(id)).await;
                removed += 1;
            }
            drop(lock);
        }
        let live: std::collections::HashSet<Uuid> = client
            .query("SELECT id FROM uploads", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(client);
        if let Ok(mut dir) = tokio::fs::read_dir(&self.upload_dir).await {
            while let Ok(Some(entry)) = dir.next_entry().await {
                let orphan = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Uuid::parse_str(n).ok())
                    .is_some_and(|id| !live.contains(&id));
                // Only files older than a minute: a session being created has its file first.
                let old = entry
                    .metadata()
                    .await
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(60));
                if orphan && old {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        Ok(removed)
    }
}

/// A session's spool, locked for one chunk.
struct Locked {
    file: nix::fcntl::Flock<std::fs::File>,
    /// Where the chunk must start: the bytes the session holds.
    offset: u64,
    /// What the tenant's byte quota leaves, for a session of undeclared size.
    room: Option<super::Room>,
}

/// One chunk being received: into the spool, through the running digest and, when the
/// session writes through, into the backend.
struct Intake {
    id: Uuid,
    spool: Spool,
    pipeline: Option<HashPipeline>,
    through: Option<WriteThrough>,
    /// Where the chunk started.
    offset: u64,
    /// Bytes the session holds so far (reset to `offset` when the chunk is dropped).
    received: u64,
    /// Bytes of this chunk that went through the digest.
    hashed: u64,
    room: Option<super::Room>,
    /// Most bytes the session may hold.
    limit: u64,
    size: Option<u64>,
    max_file_size: u64,
}

impl Intake {
    /// Reads the body into the spool; the reason it stopped early, if it did. A chunk that
    /// would pass the quota or the size is dropped whole; one whose body broke off keeps what
    /// arrived (the client resumes from the recorded offset).
    async fn receive<S>(&mut self, body: S) -> Option<Error>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        pin_mut!(body);
        while let Some(item) = body.next().await {
            let bytes = match item {
                Ok(bytes) => bytes,
                Err(e) => return Some(Error::Body(e.to_string())),
            };
            let len = bytes.len() as u64;
            if let Some(room) = self.room
                && self.received + len > room.left()
            {
                self.received = self.offset; // nothing of this chunk is kept
                return Some(room.refusal());
            }
            if self.received + len > self.limit {
                self.received = self.offset; // nothing of this chunk is kept
                return Some(if self.size.is_some() && self.limit < self.max_file_size {
                    Error::InvalidInput(format!(
                        "the chunk goes past the upload's size of {} bytes",
                        self.limit
                    ))
                } else {
                    Error::LimitExceeded(format!(
                        "the upload exceeds the maximum file size of {} bytes",
                        self.max_file_size
                    ))
                });
            }
            if let Some(p) = &mut self.pipeline {
                p.update(bytes.clone()).await;
                self.hashed += len;
            }
            if let Err(e) = self.spool.write(bytes.clone()).await {
                self.received = self.offset;
                return Some(spool_error("writing spool", e));
            }
            self.received += len;
            // Only bytes the spool took go through: the two never disagree on a prefix.
            let failed = match &mut self.through {
                Some(t) => t.write(bytes).await.err(),
                None => None,
            };
            if let Some(reason) = failed
                && let Some(t) = self.through.take()
            {
                tracing::warn!(upload = %self.id, backend = t.backend().id(), %reason,
                    "writing through to the backend failed; the spooled file will be \
                     stored at completion");
            }
        }
        None
    }
}

//! Resumable upload sessions: bytes arrive in chunks over many requests, then become a file.
//!
//! A session whose backend stages writes in pieces any server may add (S3) keeps its bytes
//! there and its state in PostgreSQL, so any server takes its next chunk or completes it
//! ([`shared`]). Otherwise (the local backend) its bytes are spooled on the disk of the server
//! that created it, as follows.
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
//! The bytes are hashed as they are spooled ([`live`]). Completion then checks the digest and
//! lets the backend adopt the spool file. A process that does not hold the session's state (a
//! restart) streams the spool through the ordinary ingest instead, so the digests are always
//! computed over exactly the bytes kept, whatever happened in between.

mod append;
mod complete;
mod live;
mod shared;
mod spool;

use live::LiveUpload;
pub(crate) use live::LiveUploads;
pub(crate) use shared::StreamingSlots;
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

/// A session's columns, as [`row`] reads them.
const COLUMNS: &str = "id, package_id, relative_path, received, declared_size, expires_at, \
                       media_type, expected_digest, replace, state, backend_id, stage";

struct Row {
    session: UploadSession,
    media_type: Option<String>,
    expected_digest: Option<String>,
    replace: bool,
    /// Being completed: takes no more chunks.
    completing: bool,
    /// The backend its bytes are staged in, in pieces ([`shared`]); `None`: spooled.
    backend_id: Option<String>,
    /// The staged write's token, once a piece is kept.
    stage: Option<String>,
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
        backend_id: r.get(10),
        stage: r.get(11),
    })
}

/// A spool write's failure: a full disk is the server's insufficient storage (507), anything
/// else a storage fault.
/// A chunk's answer once its bytes are kept: its failure (a body that ended early), or the
/// session as it now stands (`received` bytes, of `size` if known).
fn chunk_answer(
    failure: Option<Error>,
    mut session: UploadSession,
    received: u64,
    size: Option<u64>,
) -> Result<UploadSession> {
    match failure {
        Some(e) => Err(e),
        None => {
            session.offset = received;
            session.size = size;
            Ok(session)
        }
    }
}

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
            Error::Busy(format!(
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
        if_match: None,
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
                &format!("SELECT {COLUMNS} FROM uploads WHERE id = $1 AND tenant = $2"),
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
            if_match: None,
        };
        let client = self.pool.get().await?;
        let can_add = check_can_add(
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
        // A backend that stages in pieces keeps the session's bytes; else they are spooled.
        let backend = can_add.backend(&self.backends).clone();
        if backend.pieces().is_some() {
            self.insert_upload(
                client,
                tenant,
                id,
                &new,
                now,
                expires_at,
                Some(backend.id()),
            )
            .await?;
        } else {
            self.check_spool_space(new.size).await?;
            let path = self.spool_path(id);
            tokio::fs::create_dir_all(&self.upload_dir)
                .await
                .map_err(|e| spool_error("creating spool directory", e))?;
            tokio::fs::File::create(&path)
                .await
                .map_err(|e| spool_error("creating spool file", e))?;
            let recorded = self
                .insert_upload(client, tenant, id, &new, now, expires_at, None)
                .await;
            if recorded.is_err() {
                // Refused (a quota) or not recorded: no spool without its session.
                let _ = tokio::fs::remove_file(&path).await;
            }
            recorded?;
        }
        Ok(UploadSession {
            id,
            package_id: new.package_id,
            relative_path: new.relative_path,
            offset: 0,
            size: new.size,
            expires_at,
        })
    }

    /// Records the session `id` (admitted under the tenant's quotas first); `backend_id`: the
    /// backend that stages its bytes in pieces, if one does.
    #[allow(clippy::too_many_arguments)]
    async fn insert_upload(
        &self,
        mut client: deadpool_postgres::Object,
        tenant: &TenantId,
        id: Uuid,
        new: &NewUpload,
        now: Timestamp,
        expires_at: Timestamp,
        backend_id: Option<&str>,
    ) -> Result<()> {
        let size = new.size.map(|s| s as i64);
        let expected = new.expected_digest.map(|d| d.to_string());
        let tx = client.transaction().await?;
        // Within the tenant's quotas: its sessions, and its bytes with this one's reserved.
        self.admit_session(&tx, tenant, new.size).await?;
        tx.execute(
                "INSERT INTO uploads (id, tenant, package_id, relative_path, media_type, declared_size, \
                                      expected_digest, replace, created_at, expires_at, backend_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
                    &backend_id,
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

    /// Cancels a session and removes its bytes.
    /// Not while a chunk is being received or the upload completed (409): whichever runs
    /// holds the spool's lock.
    pub async fn cancel_upload(&self, tenant: &TenantId, id: Uuid) -> Result<()> {
        let current = self.load_upload(tenant, id).await?;
        if current.backend_id.is_some() {
            return self.cancel_shared(tenant, current).await;
        }
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
        // Shared sessions (their bytes staged in a backend) go with their row, unless a
        // completion holds them; their staged writes then have no session and are swept.
        let mut removed = client
            .execute(
                "DELETE FROM uploads WHERE expires_at <= $1 AND backend_id IS NOT NULL \
                   AND (state = 'open' OR completing_until < clock_timestamp())",
                &[&now],
            )
            .await?;
        let expired: Vec<Uuid> = client
            .query(
                "SELECT id FROM uploads WHERE expires_at <= $1 AND backend_id IS NULL",
                &[&now],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for id in expired {
            let lock = match lock_spool(&self.spool_path(id), id) {
                Ok(lock) => lock,
                Err(Error::Busy(_)) => continue,
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
        drop(client);
        if let Err(e) = self.sweep_shared_stages().await {
            tracing::warn!(error = %e, "sweeping staged uploads without a session failed; will retry");
        }
        let client = self.pool.get().await?;
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

//! Upload sessions whose bytes are staged in their backend in pieces (S3: a multipart upload,
//! a piece per part) and whose state is in PostgreSQL, so that any server takes the next chunk
//! or completes the session: nothing of it is on a server's disk or only in its memory.
//!
//! A chunk claims the session (one chunk at a time; a claim it renews every few seconds, so
//! that of a server killed mid-chunk lapses within seconds), streams its body through the
//! running digest into pieces at fixed offsets (piece n holds the bytes from (n - 1) x the
//! piece size), the session's pending bytes (received after its last full piece) first, and
//! keeps what does not fill a piece as pending bytes. It records all of it in one transaction
//! that holds only if it still holds the claim and the session is where it started
//! (compare-and-set). Every piece a chunk uploads is at the number of its bytes' offset, so a
//! range sent again (after a server died mid-chunk, or a chunk was refused) replaces the
//! pieces the lost chunk had sent: a staged write never holds a piece that is not joined
//! (some S3 servers, Ceph RGW among them, refuse to join a multipart upload otherwise). The
//! client asks any server for the offset and resumes there.
//!
//! Completion claims the session (a claim it renews while it runs, so one whose server died
//! lapses), sends the pending bytes as the last piece, joins the pieces, takes the digest from
//! this process's running state when it covers every byte or else reads the joined bytes back,
//! and commits them under their address.

mod chunk;
mod complete;
mod slots;

pub(crate) use slots::StreamingSlots;

use super::*;
use crate::storage::{BlobStore, PiecedStaging};
use bytes::BytesMut;
use std::sync::Arc;

/// A task stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
impl Registry {
    /// The backend a shared session's bytes are staged in, and its pieced staging.
    fn staging_of(&self, current: &Row) -> Result<(Arc<dyn BlobStore>, Arc<dyn PiecedStaging>)> {
        let backend_id = current.backend_id.as_deref().unwrap_or_default();
        let backend = self.backends.get(backend_id).cloned().ok_or_else(|| {
            Error::storage(
                backend_id,
                "the backend holding this upload's bytes is no longer configured",
            )
        })?;
        let pieces = backend.pieces().ok_or_else(|| {
            Error::storage(backend_id, "the backend no longer stages writes in pieces")
        })?;
        Ok((backend, pieces))
    }

    /// Where the session's pending bytes start (`offset` when there are none) and how many
    /// there are, without reading them: a chunk that does not fill a piece never does, so
    /// many small chunks cost what their bytes do.
    async fn pending_extent(&self, id: Uuid, offset: u64) -> Result<(u64, u64, usize)> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT min(start), COALESCE(sum(length(bytes)), 0)::bigint, count(*) \
                 FROM upload_pending WHERE upload_id = $1",
                &[&id],
            )
            .await?;
        let len = row.get::<_, i64>(1) as u64;
        let rows = row.get::<_, i64>(2) as usize;
        let start = row.get::<_, Option<i64>>(0).map_or(offset, |s| s as u64);
        if start + len != offset {
            return Err(Error::Integrity(format!(
                "upload {id}: its pending bytes end at {}, not at its offset {offset}",
                start + len
            )));
        }
        Ok((start, len, rows))
    }

    /// The session's pending bytes and where they start (`offset` when there are none).
    pub(super) async fn pending_bytes(&self, id: Uuid, offset: u64) -> Result<(u64, BytesMut)> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT start, bytes FROM upload_pending WHERE upload_id = $1 ORDER BY start",
                &[&id],
            )
            .await?;
        let start = rows.first().map_or(offset, |r| r.get::<_, i64>(0) as u64);
        let mut buffer = BytesMut::new();
        for row in &rows {
            if row.get::<_, i64>(0) as u64 != start + buffer.len() as u64 {
                return Err(Error::Integrity(format!(
                    "upload {id}: its pending bytes are not contiguous"
                )));
            }
            buffer.extend_from_slice(row.get::<_, &[u8]>(1));
        }
        if start + buffer.len() as u64 != offset {
            return Err(Error::Integrity(format!(
                "upload {id}: its pending bytes end at {}, not at its offset {offset}",
                start + buffer.len() as u64
            )));
        }
        Ok((start, buffer))
    }

    /// Why a chunk of session `id` cannot be kept, as the session is now: gone, being
    /// completed, or at another offset.
    async fn where_now(&self, id: Uuid) -> Error {
        let state = match self.pool.get().await {
            Ok(client) => client
                .query_opt("SELECT received, state FROM uploads WHERE id = $1", &[&id])
                .await
                .map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        match state {
            Err(e) => e,
            Ok(None) => Error::not_found("upload", id),
            Ok(Some(row)) if row.get::<_, &str>(1) == "completing" => Error::Conflict(format!(
                "upload {id} is being completed and takes no more chunks"
            )),
            Ok(Some(row)) => Error::OffsetMismatch {
                offset: row.get::<_, i64>(0) as u64,
            },
        }
    }

    /// Keeps a session's running digest for its next chunk in this process (and forgets those
    /// of sessions idle past their lifetime, which another server may have ended).
    pub(super) fn keep_live(&self, id: Uuid, received: u64, hasher: DualHasher) {
        let now = self.clock.now();
        let stale = now.plus_seconds(-(self.limits.upload_ttl_seconds as i64));
        let mut live = self.live_uploads.lock().expect("live uploads");
        if let Some(stale) = stale {
            live.retain(|_, l| l.touched > stale);
        }
        live.insert(
            id,
            LiveUpload {
                received,
                hasher,
                touched: now,
            },
        );
    }

    /// Cancels a shared session: not while a completion holds it.
    pub(super) async fn cancel_shared(&self, tenant: &TenantId, current: Row) -> Result<()> {
        let id = current.session.id;
        let client = self.pool.get().await?;
        let gone = client
            .execute(
                "DELETE FROM uploads WHERE id = $1 AND tenant = $2 \
                   AND (state = 'open' OR completing_until < clock_timestamp()) \
                   AND (chunk_by IS NULL OR chunk_until < clock_timestamp())",
                &[&id, &tenant.as_str()],
            )
            .await?;
        if gone == 0 {
            return Err(Error::Busy(format!(
                "upload {id} is busy (a chunk is being received, or it is being completed); \
                 it cannot be cancelled now"
            )));
        }
        self.live_uploads.lock().expect("live uploads").remove(&id);
        if let (Some(stage), Ok((_, pieces))) = (&current.stage, self.staging_of(&current))
            && let Err(e) = pieces.abort(stage).await
        {
            tracing::warn!(upload = %id, error = %e,
                "discarding a cancelled upload's staged bytes failed; the sweep will");
        }
        Ok(())
    }

    /// Removes a shared session and its staged write (a failure to discard the latter is left
    /// to the sweep of stages without a session).
    /// `claim`: only while the completion that holds it is this one.
    async fn discard_shared(
        &self,
        id: Uuid,
        claim: Option<Uuid>,
        pieces: &dyn PiecedStaging,
    ) -> Result<()> {
        self.live_uploads.lock().expect("live uploads").remove(&id);
        let client = self.pool.get().await?;
        let stage = client
            .query_opt(
                "DELETE FROM uploads WHERE id = $1 AND ($2::uuid IS NULL OR completing_by = $2) \
                 RETURNING stage",
                &[&id, &claim],
            )
            .await?
            .and_then(|r| r.get::<_, Option<String>>(0));
        if let Some(stage) = stage
            && let Err(e) = pieces.abort(&stage).await
        {
            tracing::warn!(upload = %id, error = %e,
                "discarding an upload's staged bytes failed; the sweep will");
        }
        Ok(())
    }

    /// Discards staged writes whose session is gone (expired, cancelled, completed, or never
    /// recorded: a server died between beginning one and recording it); returns how many.
    pub(super) async fn sweep_shared_stages(&self) -> Result<u64> {
        let mut removed = 0;
        for backend in self.backends.all() {
            let Some(pieces) = backend.pieces() else {
                continue;
            };
            let stages = pieces.stages().await?;
            if stages.is_empty() {
                continue;
            }
            // Sessions read after the stages were listed: a stage listed belongs to a session
            // recorded before, which is here unless it is gone.
            let client = self.pool.get().await?;
            let sessions: Vec<Uuid> = stages.iter().map(|(s, _)| *s).collect();
            let live: std::collections::HashSet<Uuid> = client
                .query("SELECT id FROM uploads WHERE id = ANY($1)", &[&sessions])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            drop(client);
            for (session, stage) in stages {
                if !live.contains(&session) {
                    pieces.abort(&stage).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The number of the piece starting at `start` (a multiple of the piece size).
fn piece_number(start: u64, sizes: crate::storage::PieceSizes) -> Result<u32> {
    if !start.is_multiple_of(sizes.max) {
        return Err(Error::Conflict(format!(
            "the backend's piece size changed to {} bytes during this upload; start a new upload",
            sizes.max
        )));
    }
    let number = start / sizes.max + 1;
    if number > u64::from(sizes.max_number) {
        return Err(Error::LimitExceeded(format!(
            "the upload exceeds what its backend takes in {} pieces of {} bytes",
            sizes.max_number, sizes.max
        )));
    }
    Ok(number as u32)
}

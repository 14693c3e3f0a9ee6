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

use super::*;
use crate::storage::{BlobStore, PiecedStaging};
use bytes::BytesMut;
use std::sync::Arc;

/// How long a completion's claim holds without being renewed.
const CLAIM_SECONDS: f64 = 30.0;
/// How long a chunk's claim holds without being renewed, and how often it is.
const CHUNK_CLAIM_SECONDS: f64 = 10.0;
const CHUNK_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
/// Rows of pending bytes a session keeps before a chunk merges them into one.
const MAX_PENDING_ROWS: usize = 32;
/// How often a running completion renews its claim.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A piece sent, to be recorded if the chunk is kept.
struct Sent {
    number: u32,
    start: u64,
    size: u64,
    receipt: String,
}

type PieceTask = tokio::task::JoinHandle<Result<Sent>>;

/// Bounds the chunks this process streams into backends at once, and each tenant's share of
/// them (half, at least one), so no tenant's slow chunks hold them all. A chunk waits for a
/// slot up to [`SLOT_WAIT`], then is refused as busy (429).
pub(crate) struct StreamingSlots {
    slots: Arc<tokio::sync::Semaphore>,
    per_tenant: usize,
    tenants: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// How long a chunk waits for a streaming slot.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A slot (and its tenant's share), given back when dropped.
pub(crate) struct StreamingSlot {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _share: tokio::sync::OwnedSemaphorePermit,
}

impl StreamingSlots {
    pub(crate) fn new(max: usize) -> Self {
        StreamingSlots {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            per_tenant: (max / 2).max(1),
            tenants: std::sync::Mutex::default(),
        }
    }

    /// A slot for one of `tenant`'s chunks, waiting up to `wait` for its share and a slot;
    /// `Busy` (429) after that.
    async fn take_within(
        &self,
        tenant: &TenantId,
        wait: std::time::Duration,
    ) -> Result<StreamingSlot> {
        let share = self
            .tenants
            .lock()
            .expect("streaming slots")
            .entry(tenant.as_str().to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_tenant)))
            .clone();
        let taken = tokio::time::timeout(wait, async {
            let share = share.acquire_owned().await.ok()?;
            let slot = self.slots.clone().acquire_owned().await.ok()?;
            Some(StreamingSlot {
                _slot: slot,
                _share: share,
            })
        })
        .await;
        taken.ok().flatten().ok_or_else(|| {
            Error::Busy(
                "this server is streaming as many upload chunks as it may; retry shortly".into(),
            )
        })
    }

    async fn take(&self, tenant: &TenantId) -> Result<StreamingSlot> {
        self.take_within(tenant, SLOT_WAIT).await
    }
}

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

    /// Appends a chunk to a shared session (see the module docs).
    pub(super) async fn append_shared<S>(
        &self,
        tenant: &TenantId,
        current: Row,
        chunk: Chunk,
        body: S,
    ) -> Result<UploadSession>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let id = current.session.id;
        let (size, limit) = self.chunk_bounds(current.session.size, &chunk)?;
        if current.completing {
            return Err(Error::Conflict(format!(
                "upload {id} is being completed and takes no more chunks (if that completion \
                 was cut short, complete it again)"
            )));
        }
        let offset = current.session.offset;
        if chunk.start != offset {
            return Err(Error::OffsetMismatch { offset });
        }
        let (_, pieces) = self.staging_of(&current)?;
        let _slot = self.streaming_chunks.take(tenant).await?;
        let claim = Uuid::new_v4();
        let _claimed = self.claim_chunk(id, offset, claim).await?;
        let result = async {
            let room = if current.session.size.is_none() {
                let coming = size.or(chunk.end.map(|end| end + 1)).unwrap_or(offset);
                self.reserve_chunk(tenant, id, coming).await?
            } else {
                None
            };
            self.take_chunk(current, pieces, chunk, body, room, (size, limit), claim)
                .await
        }
        .await;
        if result.is_err()
            && let Ok(client) = self.pool.get().await
        {
            // Not kept: the claim is given back, and what this chunk reserved (the session's
            // size still unknown) with it.
            let _ = client
                .execute(
                    "UPDATE uploads SET chunk_by = NULL, chunk_until = NULL, \
                         reserved = CASE WHEN received = $3 THEN 0 ELSE reserved END \
                     WHERE id = $1 AND chunk_by = $2",
                    &[&id, &claim, &(offset as i64)],
                )
                .await;
        }
        result
    }

    /// Claims the session for one chunk at `offset` as `claim`, renewed until the returned
    /// guard is dropped: refused while another chunk or a completion holds it.
    async fn claim_chunk(&self, id: Uuid, offset: u64, claim: Uuid) -> Result<AbortOnDrop> {
        let client = self.pool.get().await?;
        let claimed = client
            .execute(
                "UPDATE uploads SET chunk_by = $3, \
                     chunk_until = clock_timestamp() + make_interval(secs => $4) \
                 WHERE id = $1 AND received = $2 AND state = 'open' \
                   AND (chunk_by IS NULL OR chunk_until < clock_timestamp())",
                &[&id, &(offset as i64), &claim, &CHUNK_CLAIM_SECONDS],
            )
            .await?;
        if claimed == 0 {
            return Err(match self.where_now(id).await {
                Error::OffsetMismatch { offset: now } if now == offset => Error::Conflict(format!(
                    "upload {id} is busy: another chunk is being received; retry after it"
                )),
                other => other,
            });
        }
        let pool = self.pool.clone();
        Ok(AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHUNK_RENEW_EVERY).await;
                if let Ok(client) = pool.get().await {
                    let _ = client
                        .execute(
                            "UPDATE uploads SET chunk_until = clock_timestamp() \
                                 + make_interval(secs => $3) \
                             WHERE id = $1 AND chunk_by = $2",
                            &[&id, &claim, &CHUNK_CLAIM_SECONDS],
                        )
                        .await;
                }
            }
        })))
    }

    /// Receives and records one chunk of a shared session, claimed as `claim`; `bounds`: the
    /// session's size, if known, and the most bytes it may hold.
    #[allow(clippy::too_many_arguments)]
    async fn take_chunk<S>(
        &self,
        current: Row,
        pieces: Arc<dyn PiecedStaging>,
        chunk: Chunk,
        body: S,
        room: Option<crate::registry::Room>,
        (size, limit): (Option<u64>, u64),
        claim: Uuid,
    ) -> Result<UploadSession>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let (id, offset) = (current.session.id, current.session.offset);
        let mut intake = self.start_intake(&current, pieces).await?;
        let (mut failure, mut keep) = intake.receive(body, room, limit, size).await;
        if keep
            && failure.is_none()
            && let Some(end) = chunk.end
            && intake.received != end + 1
        {
            failure = Some(Error::InvalidInput(format!(
                "Content-Range ends at byte {end}, but the body ended at byte {}",
                intake.received as i128 - 1
            )));
            keep = false;
        }
        if keep && let Err(e) = intake.settle().await {
            (failure, keep) = (Some(e), false);
        }
        if !keep {
            intake.give_up().await;
            return Err(failure.expect("a chunk is dropped for a reason"));
        }
        let received = intake.received;
        self.record_chunk(&mut intake, offset, size, claim).await?;
        if let Some(p) = intake.pipeline.take() {
            let hasher = p
                .finish_state()
                .await
                .map_err(|e| Error::Integrity(format!("hashing: {e}")))?;
            self.keep_live(id, received, hasher);
        }
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

    /// A chunk's intake for the session as `current` says it is: after its pending bytes,
    /// continuing this process's running digest if it covers exactly the bytes received.
    async fn start_intake(
        &self,
        current: &Row,
        pieces: Arc<dyn PiecedStaging>,
    ) -> Result<PieceIntake<'_>> {
        let (id, offset) = (current.session.id, current.session.offset);
        let (pending_start, pending, pending_rows) = match self.pending_extent(id, offset).await {
            Ok(extent) => extent,
            // Another chunk was kept since the session was read.
            Err(Error::Integrity(_)) => return Err(self.where_now(id).await),
            Err(e) => return Err(e),
        };
        let live = self.live_uploads.lock().expect("live uploads").remove(&id);
        let hasher = match live {
            Some(live) if live.received == offset => Some(live.hasher),
            _ if offset == 0 => Some(DualHasher::new()),
            _ => None,
        };
        Ok(PieceIntake {
            registry: self,
            pieces,
            id,
            stage: current.stage.clone(),
            begun_here: None,
            unloaded: pending,
            pending_rows,
            buffer: BytesMut::new(),
            buffer_start: pending_start,
            in_flight: std::collections::VecDeque::new(),
            sent: Vec::new(),
            pipeline: hasher.map(HashPipeline::new),
            received: offset,
        })
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

    /// Records a chunk that was received whole (or broke off with what arrived kept): the
    /// session's new offset, its pieces and pending bytes, if the session is still where the
    /// chunk found it; else the chunk is refused (and its pieces are never joined).
    async fn record_chunk(
        &self,
        intake: &mut PieceIntake<'_>,
        offset: u64,
        size: Option<u64>,
        claim: Uuid,
    ) -> Result<()> {
        let id = intake.id;
        // Pending bytes are kept in one row per chunk; past a few dozen rows this chunk's go
        // into one with theirs, so rows stay few however small the chunks.
        let merge = intake.sent.is_empty()
            && !intake.buffer.is_empty()
            && intake.pending_rows >= MAX_PENDING_ROWS;
        if merge {
            intake.load_pending().await?;
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let declared = size.map(|s| s as i64);
        let kept = tx
            .execute(
                "UPDATE uploads SET received = $2, reserved = 0, \
                                    declared_size = COALESCE(declared_size, $3), \
                                    stage = COALESCE(stage, $5), \
                                    chunk_by = NULL, chunk_until = NULL \
                 WHERE id = $1 AND received = $4 AND state = 'open' AND chunk_by = $6 \
                   AND (declared_size IS NULL OR $2 <= declared_size) \
                   AND (stage IS NULL OR stage = $5 OR $5 IS NULL)",
                &[
                    &id,
                    &(intake.received as i64),
                    &declared,
                    &(offset as i64),
                    &intake.stage,
                    &claim,
                ],
            )
            .await?;
        if kept == 0 {
            drop(tx);
            intake.give_up().await;
            return Err(self.where_now(id).await);
        }
        if !intake.sent.is_empty() || merge {
            // The first piece began with the pending bytes (they are all sent), or they are
            // merged into this chunk's row.
            tx.execute("DELETE FROM upload_pending WHERE upload_id = $1", &[&id])
                .await?;
        }
        if !intake.sent.is_empty() {
            for sent in &intake.sent {
                tx.execute(
                    "INSERT INTO upload_pieces (upload_id, number, start, size, receipt) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (upload_id, number) DO UPDATE \
                     SET start = EXCLUDED.start, size = EXCLUDED.size, receipt = EXCLUDED.receipt",
                    &[
                        &id,
                        &(sent.number as i32),
                        &(sent.start as i64),
                        &(sent.size as i64),
                        &sent.receipt,
                    ],
                )
                .await?;
            }
        }
        // The bytes not in a piece: after pieces, all that are pending now; else this chunk's,
        // added to those pending before it (never read: pending bytes are read only to be
        // sent in a piece).
        let from = if intake.sent.is_empty() && !merge {
            offset
        } else {
            intake.buffer_start
        };
        if !intake.buffer.is_empty() {
            tx.execute(
                "INSERT INTO upload_pending (upload_id, start, bytes) VALUES ($1, $2, $3)",
                &[&id, &(from as i64), &&intake.buffer[..]],
            )
            .await?;
        }
        tx.commit().await?;
        intake.begun_here = None;
        Ok(())
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

    /// Completes a shared session (see the module docs).
    pub(super) async fn complete_shared(&self, tenant: &TenantId, id: Uuid) -> Result<FileRecord> {
        let claim = Uuid::new_v4();
        let current = self.claim_completion(tenant, id, claim).await?;
        let (backend, pieces) = self.staging_of(&current)?;
        // Renewed while this completion runs, and not a moment longer: dropped with it (a
        // request cut off), the claim lapses and another completion may take over.
        let renewing = AbortOnDrop({
            let pool = self.pool.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    if let Ok(client) = pool.get().await {
                        let _ = client
                            .execute(
                                "UPDATE uploads SET completing_until = clock_timestamp() \
                                     + make_interval(secs => $2) \
                                 WHERE id = $1 AND state = 'completing' AND completing_by = $3",
                                &[&id, &CLAIM_SECONDS, &claim],
                            )
                            .await;
                    }
                }
            })
        });
        let result = self
            .complete_claimed(tenant, &current, backend, pieces.clone())
            .await;
        drop(renewing);
        let retry_later = matches!(&result, Err(e) if e.is_retryable()
                || matches!(e, Error::OverQuota { .. } | Error::InsufficientStorage(_)));
        if retry_later {
            // Kept, to complete again (it takes no more chunks: its size is fixed).
            let client = self.pool.get().await?;
            client
                .execute(
                    "UPDATE uploads SET state = 'open', completing_until = NULL, \
                                        completing_by = NULL \
                     WHERE id = $1 AND completing_by = $2",
                    &[&id, &claim],
                )
                .await?;
        } else {
            self.discard_shared(id, Some(claim), &*pieces).await?;
        }
        result
    }

    /// Claims the session for completion as `claim`: open, or claimed by a completion whose
    /// claim lapsed; its size is fixed at what it holds.
    async fn claim_completion(&self, tenant: &TenantId, id: Uuid, claim: Uuid) -> Result<Row> {
        let client = self.pool.get().await?;
        let claimed = client
            .query_opt(
                &format!(
                    "UPDATE uploads SET state = 'completing', declared_size = received, \
                         completing_until = clock_timestamp() + make_interval(secs => $4), \
                         completing_by = $5 \
                     WHERE id = $1 AND tenant = $2 AND expires_at > $3 \
                       AND (declared_size IS NULL OR declared_size = received) \
                       AND (state = 'open' OR completing_until < clock_timestamp()) \
                       AND (chunk_by IS NULL OR chunk_until < clock_timestamp()) \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &id,
                    &tenant.as_str(),
                    &self.clock.now().as_datetime(),
                    &CLAIM_SECONDS,
                    &claim,
                ],
            )
            .await?;
        match claimed {
            Some(row) => super::row(&row),
            None => {
                let current = self.load_upload(tenant, id).await?;
                Err(match current.session.size {
                    Some(size) if size != current.session.offset => Error::Conflict(format!(
                        "upload {id} has {} of its {size} bytes; send the rest before completing",
                        current.session.offset
                    )),
                    _ => Error::Conflict(format!(
                        "upload {id} is busy (a chunk is being received, or it is being \
                         completed); retry after it"
                    )),
                })
            }
        }
    }

    async fn complete_claimed(
        &self,
        tenant: &TenantId,
        current: &Row,
        backend: Arc<dyn BlobStore>,
        pieces: Arc<dyn PiecedStaging>,
    ) -> Result<FileRecord> {
        let id = current.session.id;
        let size = current.session.offset;
        let request = ingest_request(current)?;
        let (_, pending) = self.pending_bytes(id, size).await?;
        let mut kept = self.kept_pieces(id, size, pending.len() as u64).await?;
        let Some(stage) = current.stage.clone().filter(|_| !kept.is_empty()) else {
            // Too small for a piece: the pending bytes are the file.
            let body = futures::stream::iter([Ok::<_, std::io::Error>(pending.freeze())]);
            return self
                .ingest_sized_uncounted(
                    tenant,
                    current.session.package_id,
                    request,
                    body,
                    Some(size),
                )
                .await;
        };
        if !pending.is_empty() {
            let last = self
                .send_last_piece(id, size, &stage, &*pieces, pending)
                .await?;
            kept.push(last);
        }
        pieces.join(&stage, kept, size).await?;
        let live = self.live_uploads.lock().expect("live uploads").remove(&id);
        let digest = match live {
            Some(live) if live.received == size => live.hasher.finalize(),
            // Another server took some of the chunks: hash the joined bytes.
            _ => digest_of_joined(id, size, &stage, backend.as_ref(), &*pieces).await?,
        };
        crate::registry::ingest::check_expected(&request, &digest)?;
        let package_id = current.session.package_id;
        // Refuse before publishing if the file can no longer be added, or would pass the
        // tenant's byte quota.
        self.admit(
            tenant,
            package_id,
            &request,
            Some(digest.size),
            crate::registry::admission::Disk::Unchecked,
        )
        .await?;
        let media_type = request
            .media_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
        let address = digest.primary_address();
        self.publish_and_record(
            tenant,
            package_id,
            request,
            media_type,
            &digest,
            backend.as_ref(),
            pieces.commit(&stage, &address, size),
        )
        .await
    }

    /// The pieces session `id` keeps (number, receipt), checked to be its bytes in order up
    /// to where its `pending` bytes start, `size` in all with them.
    async fn kept_pieces(&self, id: Uuid, size: u64, pending: u64) -> Result<Vec<(u32, String)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT number, receipt, start, size FROM upload_pieces WHERE upload_id = $1 \
                 ORDER BY number",
                &[&id],
            )
            .await?;
        // In number order the pieces must be the bytes in order, each where the one before
        // ended (a piece size changed mid-session would break that: refused, not joined).
        let mut end = 0u64;
        for row in &rows {
            let (start, len) = (row.get::<_, i64>(2) as u64, row.get::<_, i64>(3) as u64);
            if start != end {
                return Err(Error::Conflict(format!(
                    "upload {id}: its pieces are not contiguous (the backend's piece size \
                     changed during it?); start a new upload"
                )));
            }
            end = start + len;
        }
        if end + pending != size {
            return Err(Error::Integrity(format!(
                "upload {id}: its pieces and pending bytes hold {} bytes, not {size}",
                end + pending
            )));
        }
        let kept: Vec<(u32, String)> = rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
            .collect();
        Ok(kept)
    }

    /// Sends the pending bytes (ending at `size`) as the last piece and records it, before
    /// the join, so that a completion run again after one that stopped there joins the same
    /// pieces; its number and receipt.
    async fn send_last_piece(
        &self,
        id: Uuid,
        size: u64,
        stage: &str,
        pieces: &dyn PiecedStaging,
        pending: BytesMut,
    ) -> Result<(u32, String)> {
        let start = size - pending.len() as u64;
        let number = piece_number(start, pieces.sizes())?;
        let receipt = pieces.put(stage, number, pending.freeze()).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM upload_pending WHERE upload_id = $1", &[&id])
            .await?;
        tx.execute(
            "INSERT INTO upload_pieces (upload_id, number, start, size, receipt) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &id,
                &(number as i32),
                &(start as i64),
                &((size - start) as i64),
                &receipt,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok((number, receipt))
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
            return Err(Error::Conflict(format!(
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

/// The digest of a session's joined bytes, read back from the backend.
async fn digest_of_joined(
    id: Uuid,
    size: u64,
    stage: &str,
    backend: &dyn BlobStore,
    pieces: &dyn PiecedStaging,
) -> Result<crate::identity::DualDigest> {
    let mut joined = pieces.read(stage).await?;
    let mut pipeline = HashPipeline::new(DualHasher::new());
    let mut read = 0u64;
    while let Some(chunk) = joined.next().await {
        // A broken read is the backend's passing failure: the session is kept.
        let chunk = chunk.map_err(|e| Error::Storage {
            backend: backend.id().to_owned(),
            message: format!("reading upload {id} back: {e}"),
            unavailable: true,
        })?;
        read += chunk.len() as u64;
        pipeline.update(chunk).await;
    }
    let digest = pipeline
        .finish()
        .await
        .map_err(|e| Error::Integrity(format!("hashing: {e}")))?;
    if read != size {
        return Err(Error::storage(
            backend.id(),
            format!("upload {id} read back {read} bytes, not {size}"),
        ));
    }
    Ok(digest)
}

/// One chunk of a shared session being received: its bytes (after the session's pending ones)
/// cut into pieces as they fill, several in flight while the next fills.
struct PieceIntake<'a> {
    registry: &'a Registry,
    pieces: Arc<dyn PiecedStaging>,
    id: Uuid,
    /// The session's staged write: recorded, or begun by this chunk.
    stage: Option<String>,
    /// A staged write this chunk began and has not recorded yet.
    begun_here: Option<String>,
    /// The session's pending bytes not read yet (they come before `buffer`).
    unloaded: u64,
    /// The rows they are kept in.
    pending_rows: usize,
    /// Bytes not in a piece yet: from `buffer_start`, after the unread pending ones.
    buffer: BytesMut,
    buffer_start: u64,
    in_flight: std::collections::VecDeque<PieceTask>,
    sent: Vec<Sent>,
    pipeline: Option<HashPipeline>,
    /// Bytes the session holds with this chunk's so far.
    received: u64,
}

impl PieceIntake<'_> {
    /// Reads the body; why it stopped early, if it did, and whether what arrived is kept (a
    /// body that broke off keeps it; one past the quota, the size or a piece's failure not).
    async fn receive<S>(
        &mut self,
        body: S,
        room: Option<crate::registry::Room>,
        limit: u64,
        size: Option<u64>,
    ) -> (Option<Error>, bool)
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let max_file_size = self.registry.limits.max_file_size;
        pin_mut!(body);
        while let Some(item) = body.next().await {
            let bytes = match item {
                Ok(bytes) => bytes,
                Err(e) => return (Some(Error::Body(e.to_string())), true),
            };
            let len = bytes.len() as u64;
            if let Some(room) = room
                && self.received + len > room.left()
            {
                return (Some(room.refusal()), false);
            }
            if self.received + len > limit {
                let refusal = if size.is_some() && limit < max_file_size {
                    Error::InvalidInput(format!(
                        "the chunk goes past the upload's size of {limit} bytes"
                    ))
                } else {
                    Error::LimitExceeded(format!(
                        "the upload exceeds the maximum file size of {max_file_size} bytes"
                    ))
                };
                return (Some(refusal), false);
            }
            if let Err(e) = self.take(bytes).await {
                return (Some(e), false);
            }
        }
        (None, true)
    }

    /// Takes a body chunk: hashed, buffered, and a piece sent whenever one is full.
    async fn take(&mut self, bytes: Bytes) -> Result<()> {
        if let Some(p) = &mut self.pipeline {
            p.update(bytes.clone()).await;
        }
        self.received += bytes.len() as u64;
        self.buffer.extend_from_slice(&bytes);
        let max = self.pieces.sizes().max;
        if self.unloaded + self.buffer.len() as u64 >= max {
            self.load_pending().await?;
        }
        while self.buffer.len() as u64 >= max {
            let piece = self.buffer.split_to(max as usize).freeze();
            self.send(piece).await?;
        }
        Ok(())
    }

    /// Reads the session's pending bytes into the buffer, ahead of this chunk's.
    async fn load_pending(&mut self) -> Result<()> {
        if self.unloaded == 0 {
            return Ok(());
        }
        let loaded = self
            .registry
            .pending_bytes(self.id, self.buffer_start + self.unloaded)
            .await;
        let mut pending = match loaded {
            Ok((start, pending)) if start == self.buffer_start => pending,
            // Another chunk of the session was kept meanwhile: this one will not be.
            Ok(_) | Err(Error::Integrity(_)) => {
                return Err(self.registry.where_now(self.id).await);
            }
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&self.buffer);
        self.buffer = pending;
        self.unloaded = 0;
        Ok(())
    }

    /// Sends one piece once there is room in flight.
    async fn send(&mut self, piece: Bytes) -> Result<()> {
        while self.in_flight.len() >= self.pieces.sizes().in_flight {
            self.wait_one().await?;
        }
        let stage = match &self.stage {
            Some(stage) => stage.clone(),
            None => {
                let stage = self.pieces.begin(self.id).await?;
                self.begun_here = Some(stage.clone());
                self.stage = Some(stage.clone());
                stage
            }
        };
        let start = self.buffer_start;
        let number = piece_number(start, self.pieces.sizes())?;
        self.buffer_start += piece.len() as u64;
        let pieces = self.pieces.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            let size = piece.len() as u64;
            let receipt = pieces.put(&stage, number, piece).await?;
            Ok(Sent {
                number,
                start,
                size,
                receipt,
            })
        }));
        Ok(())
    }

    /// Waits for the oldest piece in flight.
    async fn wait_one(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.pop_front() {
            let sent = task
                .await
                .map_err(|e| Error::Integrity(format!("piece upload task: {e}")))??;
            self.sent.push(sent);
        }
        Ok(())
    }

    /// Waits for every piece in flight.
    async fn wait(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_one().await?;
        }
        Ok(())
    }

    /// At the chunk's end: waits for every piece (the bytes after the last full one stay
    /// pending).
    async fn settle(&mut self) -> Result<()> {
        self.wait().await
    }

    /// The chunk is not kept: a staged write it began and did not record is discarded (its
    /// pieces in a recorded one are replaced when their range is sent again).
    async fn give_up(&mut self) {
        for task in self.in_flight.drain(..) {
            task.abort();
        }
        if let Some(stage) = self.begun_here.take() {
            let _ = self.pieces.abort(&stage).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant takes at most half the slots (at least one); slots come back when dropped;
    /// a chunk waits for one, within its bound.
    #[tokio::test]
    async fn no_tenant_holds_every_streaming_slot() {
        let slots = StreamingSlots::new(4);
        let none = std::time::Duration::ZERO;
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let first = slots.take_within(&a, none).await.unwrap();
        let _second = slots.take_within(&a, none).await.unwrap();
        assert!(matches!(
            slots.take_within(&a, none).await,
            Err(Error::Busy(_))
        ));
        let _b1 = slots.take_within(&b, none).await.unwrap();
        let _b2 = slots.take_within(&b, none).await.unwrap();
        assert!(matches!(
            slots.take_within(&b, none).await,
            Err(Error::Busy(_))
        ));
        // A waiting chunk gets the slot given back.
        let waiting = slots.take_within(&a, std::time::Duration::from_secs(5));
        let giving = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(first);
        };
        let (taken, ()) = tokio::join!(waiting, giving);
        assert!(taken.is_ok());
        // One slot in all: its one tenant may take it.
        let one = StreamingSlots::new(1);
        let _only = one.take_within(&a, none).await.unwrap();
        assert!(matches!(
            one.take_within(&b, none).await,
            Err(Error::Busy(_))
        ));
    }
}

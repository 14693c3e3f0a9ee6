//! Taking one chunk of a shared session: its claim, its pieces, its record.

use super::*;
use crate::storage::PiecedStaging;
use bytes::BytesMut;
use std::sync::Arc;

/// How long a chunk's claim holds without being renewed, and how often it is.
const CHUNK_CLAIM_SECONDS: f64 = 10.0;
const CHUNK_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
/// Rows of pending bytes a session keeps before a chunk merges them into one.
const MAX_PENDING_ROWS: usize = 32;

/// A piece sent, to be recorded if the chunk is kept.
struct Sent {
    number: u32,
    start: u64,
    size: u64,
    receipt: String,
}

type PieceTask = tokio::task::JoinHandle<Result<Sent>>;
impl Registry {
    /// Appends a chunk to a shared session (see the module docs).
    pub(in crate::registry::uploads) async fn append_shared<S>(
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
                Error::OffsetMismatch { offset: now } if now == offset => Error::Busy(format!(
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
        super::super::chunk_answer(failure, current.session, received, size)
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

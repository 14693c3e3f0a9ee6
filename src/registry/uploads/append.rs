//! Appending a chunk to a session: a shared session's is taken by [`shared`](super::shared);
//! a spooled one's one writer at a time under the spool's lock, the bytes into the spool and
//! through the running digest, then the offset recorded once they are on disk.

use super::*;

impl Registry {
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
        if current.backend_id.is_some() {
            return self.append_shared(tenant, current, chunk, body).await;
        }
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
        let hasher = match live {
            Some(live) if live.received == offset => Some(live.hasher),
            _ if offset == 0 => Some(DualHasher::new()),
            _ => None,
        };
        let mut intake = Intake {
            id,
            spool: Spool::new(file, offset),
            pipeline: hasher.map(HashPipeline::new),
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
        super::chunk_answer(failure, current.session, received, size)
    }

    /// The session's size (declared, or said by this chunk's `Content-Range`) and the most
    /// bytes it may hold.
    pub(super) fn chunk_bounds(
        &self,
        declared: Option<u64>,
        chunk: &Chunk,
    ) -> Result<(Option<u64>, u64)> {
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
            // Keep the state only if it covers exactly the bytes kept.
            if offset + hashed == received {
                self.keep_live(id, received, hasher);
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
}

/// A session's spool, locked for one chunk.
struct Locked {
    file: nix::fcntl::Flock<std::fs::File>,
    /// Where the chunk must start: the bytes the session holds.
    offset: u64,
    /// What the tenant's byte quota leaves, for a session of undeclared size.
    room: Option<crate::registry::Room>,
}

/// One chunk being received: into the spool and through the running digest.
struct Intake {
    id: Uuid,
    spool: Spool,
    pipeline: Option<HashPipeline>,
    /// Where the chunk started.
    offset: u64,
    /// Bytes the session holds so far (reset to `offset` when the chunk is dropped).
    received: u64,
    /// Bytes of this chunk that went through the digest.
    hashed: u64,
    room: Option<crate::registry::Room>,
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
            if let Err(e) = self.spool.write(bytes).await {
                self.received = self.offset;
                return Some(spool_error("writing spool", e));
            }
            self.received += len;
        }
        None
    }
}

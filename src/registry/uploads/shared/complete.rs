//! Completing a shared session: its claim, the last piece, the join, the digest, the commit.

use super::*;
use crate::storage::{BlobStore, PiecedStaging};
use bytes::BytesMut;
use std::sync::Arc;

/// How long a completion's claim holds without being renewed.
const CLAIM_SECONDS: f64 = 30.0;
/// How often a running completion renews its claim.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Registry {
    /// Completes a shared session (see the module docs).
    pub(in crate::registry::uploads) async fn complete_shared(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<FileRecord> {
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
                    _ => Error::Busy(format!(
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

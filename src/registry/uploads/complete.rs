//! Completing a session: a shared session by [`shared`](super::shared); a spooled one marked
//! `completing` under the spool's lock, the digest checked, the bytes published (the spool
//! adopted, or streamed through the ingest) and the file recorded.

use super::*;

impl Registry {
    /// Turns the received bytes into a file (checking size and any expected digest). On a
    /// digest mismatch nothing is kept: the session and its bytes are removed. A failure that
    /// may pass (the backend or the database unavailable) keeps the session, to complete again.
    ///
    /// Runs under the spool's lock, with the session marked `completing` first, so no chunk
    /// writes into the spool meanwhile or after (a chunk in flight makes this a conflict).
    pub async fn complete_upload(&self, tenant: &TenantId, id: Uuid) -> Result<FileRecord> {
        crate::registry::ingest::counted(self.complete_uncounted(tenant, id).await)
    }

    async fn complete_uncounted(&self, tenant: &TenantId, id: Uuid) -> Result<FileRecord> {
        let loaded = self.load_upload(tenant, id).await?;
        if loaded.backend_id.is_some() {
            return self.complete_shared(tenant, id).await;
        }
        let path = self.spool_path(id);
        let Some(lock) = lock_spool(&path, id)? else {
            // Another completion has moved the spool into place and is recording the file (a
            // client whose answer was lost asks again: busy, the file appears shortly), or the
            // bytes are not on this server's disk. Either way nothing here is this request's
            // to complete or to remove; the session expires in its time.
            return Err(if loaded.completing {
                Error::Busy(format!(
                    "upload {id} is being completed; retry after it (the file appears when it is done)"
                ))
            } else {
                Error::Conflict(format!(
                    "upload {id}'s bytes are not on this server; if no file appears, start a new \
                     upload"
                ))
            });
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
                     RETURNING {COLUMNS}"
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
                .complete_hashed(tenant, current, request, live.hasher.finalize())
                .await;
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::storage("uploads", format!("opening spool file: {e}")))?;
        let body =
            crate::storage::local::file_stream(file.into_std().await, current.session.offset);
        // Uncounted: the completion as a whole is counted once, by `complete_upload`.
        let result = self
            .ingest_sized_uncounted(
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

    /// Completion when the digest is already known: the backend adopts the spool file (a
    /// rename on the local backend) instead of reading and writing the bytes again. A failure that may pass (the
    /// backend or the database unavailable, no room under the quota or on the disk) keeps the
    /// session and its spooled bytes, so the client can complete again later; any other
    /// failure ends the session.
    async fn complete_hashed(
        &self,
        tenant: &TenantId,
        current: &Row,
        request: crate::registry::IngestRequest,
        digest: crate::identity::DualDigest,
    ) -> Result<FileRecord> {
        let id = current.session.id;
        if let Err(e) = crate::registry::ingest::check_expected(&request, &digest) {
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
                crate::registry::admission::Disk::Unchecked,
            )
            .await?;
        // New bytes on this server's disk only if the spool is copied (another filesystem).
        if !backend.adopts_in_place(&spool).await {
            self.check_backend_space(backend.as_ref(), Some(digest.size))
                .await?;
        }
        let media_type = request
            .media_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
        let address = digest.primary_address();
        let publish = backend.adopt_file(&spool, &address);
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
}

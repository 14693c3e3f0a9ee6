//! A staged write to S3: buffered in memory up to the multipart threshold, else a multipart
//! upload with parts in flight (to a staging key, or to the final key when the digest was
//! announced); made visible under its address only at commit.

use super::{Inner, STAGING};
use crate::error::{Error, Result};
use crate::identity::ContentAddress;
use crate::storage::{CommitOutcome, StagedBlob};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::CompletedPart;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::task::JoinSet;

/// A multipart upload to a staging key, with parts in flight.
pub(super) struct Multipart {
    key: String,
    upload_id: String,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
}

pub(super) struct S3Staged {
    pub(super) inner: Arc<Inner>,
    pub(super) buffer: BytesMut,
    pub(super) written: u64,
    pub(super) multipart: Option<Multipart>,
    /// The address the bytes are announced to have: a multipart upload then goes straight to
    /// the final key (an unfinished multipart upload is invisible), saving the server-side
    /// copy. Completed only if the bytes really have that address; else aborted.
    pub(super) expected: Option<ContentAddress>,
}

impl S3Staged {
    async fn start_multipart(&mut self) -> Result<()> {
        let inner = &self.inner;
        let key = match &self.expected {
            Some(address) => format!("{}{}", inner.prefix, address.storage_key()),
            None => format!("{}{STAGING}/{}", inner.prefix, uuid::Uuid::new_v4()),
        };
        let upload_id = inner
            .create_multipart(&key, "starting staged upload")
            .await?;
        self.multipart = Some(Multipart {
            key,
            upload_id,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
        });
        Ok(())
    }

    /// Sends `body` as the next part, waiting first while too many parts are in flight.
    async fn send_part(&mut self, body: Bytes) -> Result<()> {
        let limit = self.inner.parts_in_flight;
        let inner = self.inner.clone();
        let upload = self.multipart.as_mut().expect("multipart started");
        while upload.in_flight.len() >= limit {
            let part = join(&inner.id, upload.in_flight.join_next().await)?;
            upload.done.push(part);
        }
        let number = upload.next_part;
        upload.next_part += 1;
        let (key, upload_id) = (upload.key.clone(), upload.upload_id.clone());
        upload.in_flight.spawn(async move {
            let request = inner
                .client
                .upload_part()
                .bucket(&inner.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(body.len() as i64)
                .body(S3Body::from(body))
                .customize();
            let request = if inner.sign_payload {
                request
            } else {
                request.disable_payload_signing()
            };
            let part = request
                .send()
                .await
                .map_err(|e| inner.error("uploading part", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_owned))
                .build())
        });
        Ok(())
    }

    /// Sends every full chunk in the buffer.
    async fn drain_full_chunks(&mut self) -> Result<()> {
        let chunk = self.inner.chunk as usize;
        while self.buffer.len() >= chunk {
            let part = self.buffer.split_to(chunk).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn finish_parts(&mut self) -> Result<Vec<CompletedPart>> {
        if !self.buffer.is_empty() {
            let last = self.buffer.split().freeze();
            self.send_part(last).await?;
        }
        let upload = self.multipart.as_mut().expect("multipart started");
        while let Some(result) = upload.in_flight.join_next().await {
            upload.done.push(join(&self.inner.id, Some(result))?);
        }
        let mut parts = std::mem::take(&mut upload.done);
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    async fn commit_multipart(&mut self, address: &ContentAddress) -> Result<CommitOutcome> {
        let final_key = format!("{}{}", self.inner.prefix, address.storage_key());
        let parts = self.finish_parts().await?;
        let upload = self.multipart.take().expect("multipart started");
        let inner = self.inner.clone();
        if inner.head_key(&final_key).await? == Some(self.written) {
            inner.abort_upload(&upload.key, &upload.upload_id).await?;
            return Ok(CommitOutcome::AlreadyPresent);
        }
        if upload.key == final_key {
            // Uploaded straight to its address (announced and confirmed): completing it is
            // the atomic step.
            let completed = inner.complete(&upload.key, &upload.upload_id, parts).await;
            if completed.is_err() {
                let _ = inner.abort_upload(&upload.key, &upload.upload_id).await;
            }
            return completed.map(|()| CommitOutcome::Stored);
        }
        let published = async {
            inner
                .complete(&upload.key, &upload.upload_id, parts)
                .await?;
            inner
                .copy_to_final(&upload.key, &final_key, self.written)
                .await
        }
        .await;
        if published.is_err() {
            let _ = inner.abort_upload(&upload.key, &upload.upload_id).await;
        }
        // The staged object is garbage either way.
        let _ = inner.delete_key(&upload.key).await;
        published.map(|()| CommitOutcome::Stored)
    }
}

type PartResult = std::result::Result<Result<CompletedPart>, tokio::task::JoinError>;

fn join(backend: &str, result: Option<PartResult>) -> Result<CompletedPart> {
    match result {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(Error::storage(backend, format!("part upload task: {e}"))),
        None => Err(Error::storage(backend, "no part upload in flight")),
    }
}

#[async_trait::async_trait]
impl StagedBlob for S3Staged {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.written += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        if self.multipart.is_none() && self.buffer.len() as u64 > self.inner.threshold {
            self.start_multipart().await?;
        }
        if self.multipart.is_some() {
            self.drain_full_chunks().await?;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>, address: &ContentAddress) -> Result<CommitOutcome> {
        if let Some(expected) = self.expected
            && expected != *address
        {
            // A multipart upload under way is at the announced key: it must never complete.
            self.abort().await?;
            return Err(Error::DigestMismatch {
                expected,
                actual: *address,
            });
        }
        if self.multipart.is_some() {
            return self.commit_multipart(address).await;
        }
        let key = format!("{}{}", self.inner.prefix, address.storage_key());
        // A blob of the right size is these bytes (the address says so); one of the wrong size
        // was damaged behind our back, and replacing it heals it.
        if self.inner.head_key(&key).await? == Some(self.written) {
            return Ok(CommitOutcome::AlreadyPresent);
        }
        let body = std::mem::take(&mut self.buffer).freeze();
        self.inner.put_final(&key, body).await?;
        Ok(CommitOutcome::Stored)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(mut upload) = self.multipart.take() {
            upload.in_flight.shutdown().await;
            self.inner
                .abort_upload(&upload.key, &upload.upload_id)
                .await?;
        }
        Ok(())
    }
}

impl Drop for S3Staged {
    fn drop(&mut self) {
        // Neither committed nor aborted (the request was cancelled): abort the staged upload in
        // the background; the staging sweep catches what this misses.
        if let Some(upload) = self.multipart.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let inner = self.inner.clone();
            runtime.spawn(async move {
                let mut in_flight = upload.in_flight;
                in_flight.shutdown().await;
                if let Err(e) = inner.abort_upload(&upload.key, &upload.upload_id).await {
                    tracing::warn!(error = %e, "could not abort an abandoned staged upload");
                }
            });
        }
    }
}

//! A staged write to S3 as one streamed PUT, for a body whose length is
//! known before the first byte (a raw PUT's Content-Length, an upload session's file). Ceph
//! takes a single PUT with much less work than the same bytes in parts (see
//! docs/BENCHMARKS.md). The body cannot be signed (its hash is not known up front) nor retried
//! (it cannot be replayed), so it is used only with `sign_payload = false`, and a failed
//! request fails the ingest (the client retries).
//!
//! The last chunk is held back until commit: S3 stores nothing until it has every byte of
//! the Content-Length, so an object appears only when commit sends that chunk; an abort or a
//! drop ends the body with an error instead, and the server discards what it had. Without an
//! announced address the PUT goes to a staging key and commit copies it to its address. With
//! one, it goes straight to the announced address, and commit sends the last chunk only once
//! the bytes are confirmed to be that address: that saves the server-side copy.

use super::{Inner, STAGING};
use crate::error::{Error, Result};
use crate::identity::ContentAddress;
use crate::storage::{CommitOutcome, StagedBlob};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Chunks in flight between the ingest and the request body.
const QUEUE: usize = 16;
/// The request may take as long as the configured attempt timeout plus the time to send
/// the body at this rate: a slow client must not trip the timeout meant for a stuck server.
const SLOWEST_BYTES_PER_SECOND: u64 = 256 * 1024;

pub(super) struct S3Streamed {
    inner: Arc<Inner>,
    key: String,
    size: u64,
    written: u64,
    /// The address the PUT goes straight to (announced), or `None` for a staging key.
    announced: Option<ContentAddress>,
    /// The last chunk written, not sent until commit: until then the server has less than
    /// the Content-Length and stores nothing, so an abandoned write leaves nothing behind.
    held: Option<Bytes>,
    body: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    request: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl S3Streamed {
    pub(super) fn start(inner: Arc<Inner>, size: u64, announced: Option<ContentAddress>) -> Self {
        let key = match &announced {
            Some(address) => format!("{}{}", inner.prefix, address.storage_key()),
            None => format!("{}{STAGING}/{}", inner.prefix, uuid::Uuid::new_v4()),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
        let frames = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|chunk| chunk.map(http_body::Frame::data));
        let body = S3Body::from_body_1_x(http_body_util::StreamBody::new(frames));
        let timeout = inner.attempt_timeout + Duration::from_secs(size / SLOWEST_BYTES_PER_SECOND);
        let request = {
            let inner = inner.clone();
            let key = key.clone();
            tokio::spawn(async move {
                inner
                    .client
                    .put_object()
                    .bucket(&inner.bucket)
                    .key(&key)
                    .content_length(size as i64)
                    .body(body)
                    .set_storage_class(inner.storage_class.clone())
                    .set_server_side_encryption(inner.sse.clone())
                    .customize()
                    .disable_payload_signing()
                    .config_override(
                        aws_sdk_s3::config::Builder::default().timeout_config(
                            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                                .operation_attempt_timeout(timeout)
                                .build(),
                        ),
                    )
                    .send()
                    .await
                    .map_err(|e| inner.error("streaming staged object", e))?;
                Ok(())
            })
        };
        S3Streamed {
            inner,
            key,
            size,
            written: 0,
            announced,
            held: None,
            body: Some(tx),
            request: Some(request),
        }
    }

    /// The request's own error, once it has ended (the body's channel closed under us).
    async fn request_error(&mut self) -> Error {
        match self.request.take() {
            Some(request) => match request.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::storage(&self.inner.id, "the staged request ended early"),
                Err(e) => Error::storage(&self.inner.id, format!("staged request task: {e}")),
            },
            None => Error::storage(&self.inner.id, "the staged request is gone"),
        }
    }

    /// Ends the body with an error (so the server discards the object) and removes whatever
    /// may have been stored at a staging key. An announced address is never deleted: the held
    /// chunk was not sent, so nothing of ours is there, and what is there is someone's blob.
    async fn cancel(&mut self) {
        self.held = None;
        if let Some(body) = self.body.take() {
            let _ = body
                .send(Err(std::io::Error::other("staged write aborted")))
                .await;
        }
        if let Some(request) = self.request.take() {
            let _ = request.await;
        }
        if self.announced.is_none() {
            let _ = self.inner.delete_key(&self.key).await;
        }
    }

    /// Sends a chunk into the request's body.
    async fn send(&mut self, chunk: Bytes) -> Result<()> {
        let sent = match &self.body {
            Some(body) => body.send(Ok(chunk)).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.request_error().await);
        }
        Ok(())
    }

    /// Ends the body and waits for the server's answer.
    async fn finish(&mut self) -> Result<()> {
        if let Some(held) = self.held.take() {
            self.send(held).await?;
        }
        drop(self.body.take()); // the end of the body
        match self.request.take() {
            Some(request) => request
                .await
                .map_err(|e| Error::storage(&self.inner.id, format!("staged request task: {e}")))
                .and_then(|r| r),
            None => Err(Error::storage(&self.inner.id, "the staged request is gone")),
        }
    }
}

#[async_trait::async_trait]
impl StagedBlob for S3Streamed {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(Error::InvalidInput(format!(
                "the body is longer than its announced {} bytes",
                self.size
            )));
        }
        if chunk.is_empty() {
            return Ok(());
        }
        // Hold this chunk back, send the one held before.
        match self.held.replace(chunk) {
            Some(previous) => self.send(previous).await,
            None => Ok(()),
        }
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>, address: &ContentAddress) -> Result<CommitOutcome> {
        if self.written != self.size {
            let e = Error::InvalidInput(format!(
                "the body ended after {} of its announced {} bytes",
                self.written, self.size
            ));
            self.cancel().await;
            return Err(e);
        }
        if let Some(expected) = self.announced {
            return self.commit_announced(expected, address).await;
        }
        let sent = self.finish().await;
        let inner = self.inner.clone();
        let final_key = format!("{}{}", inner.prefix, address.storage_key());
        let published = match sent {
            Err(e) => Err(e),
            Ok(()) => {
                if inner.head_key(&final_key).await? == Some(self.written) {
                    Ok(CommitOutcome::AlreadyPresent)
                } else {
                    inner
                        .copy_to_final(&self.key, &final_key, self.written)
                        .await
                        .map(|()| CommitOutcome::Stored)
                }
            }
        };
        // The staged object is garbage either way.
        let _ = inner.delete_key(&self.key).await;
        published
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.cancel().await;
        Ok(())
    }
}

impl S3Streamed {
    /// Commits a PUT that went straight to `expected`: sends the held chunk if the bytes are
    /// confirmed to be `expected` and the address does not hold them already.
    async fn commit_announced(
        &mut self,
        expected: ContentAddress,
        address: &ContentAddress,
    ) -> Result<CommitOutcome> {
        if expected != *address {
            self.cancel().await;
            return Err(Error::DigestMismatch {
                expected,
                actual: *address,
            });
        }
        if self.inner.head_key(&self.key).await? == Some(self.size) {
            self.cancel().await;
            return Ok(CommitOutcome::AlreadyPresent);
        }
        self.finish().await.map(|()| CommitOutcome::Stored)
    }
}

impl Drop for S3Streamed {
    fn drop(&mut self) {
        // Neither committed nor aborted (the request was cancelled): end the body with an
        // error in the background; the staging sweep removes anything left.
        if let (Some(body), Ok(runtime)) = (self.body.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = body
                    .send(Err(std::io::Error::other("staged write dropped")))
                    .await;
            });
        }
    }
}

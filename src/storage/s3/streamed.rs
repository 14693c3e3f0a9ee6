//! A staged write to S3 as one streamed PUT to a staging key, for a body whose length is
//! known before the first byte (a raw PUT's Content-Length, an upload session's file). Ceph
//! takes a single PUT with much less work than the same bytes in parts (see
//! docs/BENCHMARKS.md). The body cannot be signed (its hash is not known up front) nor retried
//! (it cannot be replayed), so it is used only with `sign_payload = false`, and a failed
//! request fails the ingest (the client retries). Nothing appears under an address until
//! commit copies the staged object there, as for multipart staging.

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
    body: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    request: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl S3Streamed {
    pub(super) fn start(inner: Arc<Inner>, size: u64) -> Self {
        let key = format!("{}{STAGING}/{}", inner.prefix, uuid::Uuid::new_v4());
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
    /// may have been stored.
    async fn cancel(&mut self) {
        if let Some(body) = self.body.take() {
            let _ = body
                .send(Err(std::io::Error::other("staged write aborted")))
                .await;
        }
        if let Some(request) = self.request.take() {
            let _ = request.await;
        }
        let _ = self.inner.delete_key(&self.key).await;
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
        let sent = match &self.body {
            Some(body) => body.send(Ok(chunk)).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.request_error().await);
        }
        Ok(())
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
        drop(self.body.take()); // the end of the body
        let sent = match self.request.take() {
            Some(request) => request
                .await
                .map_err(|e| Error::storage(&self.inner.id, format!("staged request task: {e}")))
                .and_then(|r| r),
            None => Err(Error::storage(&self.inner.id, "the staged request is gone")),
        };
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

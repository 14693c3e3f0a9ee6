//! Staged writes in pieces that any server may add: one multipart upload per upload session
//! at `<key_prefix>/.uploads/<session>/<uuid>`, a piece per part. The token is the key and the
//! upload id; the receipts are the parts' ETags. Joining completes the multipart upload (the
//! staged object), committing copies it server-side to its address, aborting deletes it.
//!
//! These live as long as their session (a day by default), so the staging sweep, which ends
//! writes abandoned for an hour, leaves them alone; the registry discards those whose session
//! is gone.

use super::{Inner, MIN_PART};
use crate::error::{Error, Result};
use crate::identity::ContentAddress;
use crate::storage::{ByteStream, CommitOutcome, PieceSizes, PiecedStaging};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::CompletedPart;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use uuid::Uuid;

/// Where session stages live under the key prefix.
pub(super) const UPLOADS: &str = ".uploads";
/// The S3 API's highest part number.
const MAX_PARTS: u32 = 10_000;

pub(super) struct S3Pieces {
    pub(super) inner: Arc<Inner>,
}

/// A token's parts: the key and the multipart upload id (empty once only the joined object
/// is known, as listed).
fn parse(token: &str) -> Result<(&str, &str)> {
    token
        .split_once('\n')
        .ok_or_else(|| Error::Integrity(format!("not a staged-write token: {token:?}")))
}

impl S3Pieces {
    /// The key under which `session`'s stages live.
    fn session_prefix(&self) -> String {
        format!("{}{UPLOADS}/", self.inner.prefix)
    }

    /// The session a stage key belongs to.
    fn session_of(&self, key: &str) -> Option<Uuid> {
        let rest = key.strip_prefix(&self.session_prefix())?;
        Uuid::parse_str(rest.split('/').next()?).ok()
    }
}

#[async_trait::async_trait]
impl PiecedStaging for S3Pieces {
    fn sizes(&self) -> PieceSizes {
        PieceSizes {
            min: MIN_PART,
            max: self.inner.chunk.max(MIN_PART),
            max_number: MAX_PARTS,
            in_flight: self.inner.parts_in_flight.max(1),
        }
    }

    async fn begin(&self, session: Uuid) -> Result<String> {
        let inner = &self.inner;
        let key = format!("{}{session}/{}", self.session_prefix(), Uuid::new_v4());
        let upload_id = inner
            .create_multipart(&key, "starting staged upload")
            .await?;
        Ok(format!("{key}\n{upload_id}"))
    }

    async fn put(&self, token: &str, number: u32, bytes: Bytes) -> Result<String> {
        let inner = &self.inner;
        let (key, upload_id) = parse(token)?;
        let request = inner
            .client
            .upload_part()
            .bucket(&inner.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_length(bytes.len() as i64)
            .body(S3Body::from(bytes))
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
        part.e_tag()
            .map(str::to_owned)
            .ok_or_else(|| Error::storage(&inner.id, "the server returned no part ETag"))
    }

    async fn join(&self, token: &str, pieces: Vec<(u32, String)>, size: u64) -> Result<()> {
        let inner = &self.inner;
        let (key, upload_id) = parse(token)?;
        // Joined already (a completion that stopped after this step, run again).
        if inner.head_key(key).await? == Some(size) {
            return Ok(());
        }
        let parts = pieces
            .into_iter()
            .map(|(number, etag)| {
                CompletedPart::builder()
                    .part_number(number as i32)
                    .e_tag(etag)
                    .build()
            })
            .collect();
        match inner.complete(key, upload_id, parts).await {
            Ok(()) => {}
            // Completed meanwhile by another completion of the same session.
            Err(e) if inner.head_key(key).await? == Some(size) => {
                tracing::debug!(error = %e, "staged upload joined meanwhile");
            }
            Err(e) => return Err(e),
        }
        match inner.head_key(key).await? {
            Some(joined) if joined == size => Ok(()),
            joined => Err(Error::Integrity(format!(
                "the joined staged upload holds {joined:?} bytes, not {size}"
            ))),
        }
    }

    async fn read(&self, token: &str) -> Result<ByteStream> {
        let inner = &self.inner;
        let (key, _) = parse(token)?;
        let response = inner
            .client
            .get_object()
            .bucket(&inner.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| inner.error("reading staged upload", e))?;
        Ok(
            futures::stream::try_unfold(response.body, |mut body| async move {
                match body.try_next().await {
                    Ok(Some(bytes)) => Ok(Some((bytes, body))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(std::io::Error::other(e)),
                }
            })
            .boxed(),
        )
    }

    async fn commit(
        &self,
        token: &str,
        address: &ContentAddress,
        size: u64,
    ) -> Result<CommitOutcome> {
        let inner = &self.inner;
        let (key, _) = parse(token)?;
        let final_key = format!("{}{}", inner.prefix, address.storage_key());
        // The staged object stays until `abort`: a completion that fails to record the file
        // after this (and is run again) commits again from it.
        if inner.head_key(&final_key).await? == Some(size) {
            return Ok(CommitOutcome::AlreadyPresent);
        }
        inner.copy_to_final(key, &final_key, size).await?;
        Ok(CommitOutcome::Stored)
    }

    async fn abort(&self, token: &str) -> Result<()> {
        let inner = &self.inner;
        let (key, upload_id) = parse(token)?;
        if !upload_id.is_empty() {
            inner.abort_upload(key, upload_id).await?;
        }
        inner.delete_key(key).await
    }

    async fn stages(&self) -> Result<Vec<(Uuid, String)>> {
        let inner = &self.inner;
        let prefix = self.session_prefix();
        let mut found = Vec::new();
        for (key, id, _) in inner.multipart_uploads(&prefix).await? {
            if let Some(session) = self.session_of(&key) {
                found.push((session, format!("{key}\n{id}")));
            }
        }
        for (key, _) in inner.objects(&prefix).await? {
            if let Some(session) = self.session_of(&key) {
                found.push((session, format!("{key}\n")));
            }
        }
        Ok(found)
    }
}

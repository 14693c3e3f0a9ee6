//! The S3 requests the backend makes (multipart uploads, single PUTs, server-side copies,
//! HEAD, DELETE, listings of unfinished uploads), each with its SDK errors mapped into
//! [`Error`]: nothing above this file sees S3's vocabulary.

use super::{COPY_PART, Inner, MAX_SINGLE_COPY};
use crate::error::{Error, Result};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

impl Inner {
    /// Maps an SDK error: 404 is `NotFound`; timeouts, connection failures, throttling and 5xx
    /// are "unavailable" (503 to clients); anything else is a storage fault.
    pub(super) fn error<E>(
        &self,
        what: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        if status == Some(404) && e.code() != Some("NoSuchBucket") {
            return Error::NotFound {
                what: format!("object ({what})"),
            };
        }
        let unavailable = match &e {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
            SdkError::ResponseError(_) => true,
            _ => status.is_some_and(|s| s >= 500 || s == 429) || e.code() == Some("SlowDown"),
        };
        Error::Storage {
            backend: self.id.clone(),
            message: format!("{what}: {}", DisplayErrorContext(&e)),
            unavailable,
        }
    }

    /// Every unfinished multipart upload under `prefix` (all pages): key, upload id, and when
    /// it was begun.
    pub(super) async fn multipart_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, Option<aws_sdk_s3::primitives::DateTime>)>> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.error("listing staged uploads", e))?;
            for upload in page.uploads() {
                if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                    found.push((key.to_owned(), id.to_owned(), upload.initiated().copied()));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// Every object under `prefix` (all pages): key and when it was last modified. For the
    /// staging areas, which hold few objects; blobs are listed as a stream (`list`).
    pub(super) async fn objects(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Option<aws_sdk_s3::primitives::DateTime>)>> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("listing staged objects", e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    found.push((key.to_owned(), object.last_modified().copied()));
                }
            }
        }
        Ok(found)
    }

    /// Starts a multipart upload at `key` (with the bucket's storage class and encryption);
    /// its upload id.
    pub(super) async fn create_multipart(&self, key: &str, what: &str) -> Result<String> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_storage_class(self.storage_class.clone())
            .set_server_side_encryption(self.sse.clone())
            .send()
            .await
            .map_err(|e| self.error(what, e))?;
        upload
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Error::storage(&self.id, "the server returned no upload id"))
    }

    /// A request's answer, `None` where the object (or upload) is not there.
    fn unless_absent<T, E>(
        &self,
        what: &str,
        answer: std::result::Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    ) -> Result<Option<T>>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match answer {
            Ok(value) => Ok(Some(value)),
            Err(e) => match self.error(what, e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub(super) async fn head_key(&self, key: &str) -> Result<Option<u64>> {
        let answer = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        Ok(self
            .unless_absent("head", answer)?
            .map(|head| head.content_length().unwrap_or(0).max(0) as u64))
    }

    /// Deletes an object; one already gone is deleted.
    pub(super) async fn delete_key(&self, key: &str) -> Result<()> {
        let answer = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        self.unless_absent("delete", answer).map(drop)
    }

    /// Aborts a multipart upload; one already gone is aborted.
    pub(super) async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let answer = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        self.unless_absent("aborting staged upload", answer)
            .map(drop)
    }

    pub(super) async fn put_final(&self, key: &str, body: Bytes) -> Result<()> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(body.len() as i64)
            .body(S3Body::from(body))
            .set_storage_class(self.storage_class.clone())
            .set_server_side_encryption(self.sse.clone())
            .customize();
        let request = if self.sign_payload {
            request
        } else {
            request.disable_payload_signing()
        };
        request
            .send()
            .await
            .map_err(|e| self.error("storing blob", e))?;
        Ok(())
    }

    /// Copies a complete staged object to the final key, server-side.
    pub(super) async fn copy_to_final(&self, from: &str, to: &str, size: u64) -> Result<()> {
        let source = format!("{}/{}", self.bucket, from);
        if size <= MAX_SINGLE_COPY {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(to)
                .copy_source(&source)
                .set_storage_class(self.storage_class.clone())
                .set_server_side_encryption(self.sse.clone())
                .send()
                .await
                .map_err(|e| self.error("publishing staged blob", e))?;
            return Ok(());
        }
        let upload_id = self.create_multipart(to, "starting multipart copy").await?;
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1;
            while offset < size {
                let end = (offset + COPY_PART).min(size) - 1;
                let part = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(to)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={offset}-{end}"))
                    .send()
                    .await
                    .map_err(|e| self.error("copying part", e))?;
                let etag = part
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default();
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .build(),
                );
                offset = end + 1;
                number += 1;
            }
            self.complete(to, &upload_id, parts).await
        }
        .await;
        if result.is_err() {
            let _ = self.abort_upload(to, &upload_id).await;
        }
        result
    }

    pub(super) async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<()> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("completing staged upload", e))?;
        Ok(())
    }
}

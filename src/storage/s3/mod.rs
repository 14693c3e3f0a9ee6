//! S3-compatible backend (Ceph RGW, MinIO, AWS S3) over `aws-sdk-s3`.
//!
//! Keys: `<key_prefix>/<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>`. The digest of a stream is known
//! only at its end, so bytes are staged first and made to appear under their address in one
//! atomic step:
//! - up to `multipart_threshold_bytes` they stay in memory and go up in one `PutObject` to the
//!   final key at commit (a single PUT is atomic: the object is whole or absent);
//! - above it they stream as a multipart upload to `<key_prefix>/.staging/<uuid>`, several parts
//!   in flight, and at commit the staged object is copied server-side to the final key (again
//!   atomic; Ceph RGW copies by reference within a pool) and the staged copy is deleted.
//!
//! If the address already holds an object of the right size, the staged bytes are dropped.
//! Nothing here is S3 vocabulary to the rest of the crate: errors map into [`Error`].

use super::{BackendHealth, BlobInfo, BlobStore, ByteRange, ByteStream, StagedBlob, WriteHint};
use crate::error::{Error, Result};
use crate::identity::{Algorithm, ContentAddress, Digest};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;

mod pieces;
mod requests;
mod settings;
mod staged;
mod streamed;
mod sweep;
mod trace;
pub use settings::{S3Settings, SecretRef};
use staged::S3Staged;

/// The S3 API's minimum size of every part but the last.
const MIN_PART: u64 = 5 * 1024 * 1024;
/// The largest object a single CopyObject may copy; larger ones are copied part by part.
const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// Part size of a server-side multipart copy.
const COPY_PART: u64 = 1024 * 1024 * 1024;
const STAGING: &str = ".staging";
/// The largest object one PUT may create.
const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;

/// A bucket (and key prefix) holding blobs.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
    sse: Option<aws_sdk_s3::types::ServerSideEncryption>,
    threshold: u64,
    chunk: u64,
    parts_in_flight: usize,
    /// Sign request bodies (see `S3Settings::sign_payload`).
    sign_payload: bool,
    /// The configured time one attempt of one request may take.
    attempt_timeout: Duration,
    /// Minimum age of the last good write probe before health writes another.
    write_probe_every: std::time::Duration,
    /// When a health write probe last succeeded.
    last_write_probe: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("id", &self.inner.id)
            .field("bucket", &self.inner.bucket)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds a client from validated settings (credentials are resolved here, once).
    pub fn open(id: impl Into<String>, settings: &S3Settings) -> Result<Self> {
        use aws_sdk_s3::config::{
            BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
            ResponseChecksumValidation, retry::RetryConfig, timeout::TimeoutConfig,
        };
        let id = id.into();
        settings
            .validate()
            .map_err(|e| Error::InvalidInput(format!("backend `{id}`: {e}")))?;
        let access = settings
            .access_key_ref
            .resolve()
            .map_err(|e| Error::InvalidInput(format!("backend `{id}` access_key_ref: {e}")))?;
        let secret = settings
            .secret_key_ref
            .resolve()
            .map_err(|e| Error::InvalidInput(format!("backend `{id}` secret_key_ref: {e}")))?;
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(Credentials::new(
                access,
                secret,
                None,
                None,
                "artifactstore",
            ))
            .force_path_style(settings.force_path_style)
            .interceptor(trace::TraceContext)
            // Ceph 16 rejects the streamed aws-chunked encoding with trailing checksums, and our
            // own digests are the integrity guarantee: send and check checksums only when the
            // API requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(100)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(settings.connect_timeout_seconds))
                    .operation_attempt_timeout(Duration::from_secs(
                        settings.request_timeout_seconds,
                    ))
                    .build(),
            );
        if let Some(url) = &settings.endpoint_url {
            config = config.endpoint_url(url);
        }
        let prefix = settings.key_prefix.trim_matches('/');
        Ok(S3Store {
            inner: Arc::new(Inner {
                id,
                client: Client::from_conf(config.build()),
                bucket: settings.bucket.clone(),
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
                storage_class: settings.storage_class.as_deref().map(Into::into),
                sse: settings.sse.as_deref().map(Into::into),
                threshold: settings.multipart_threshold_bytes,
                chunk: settings.multipart_chunk_bytes,
                parts_in_flight: settings.multipart_concurrency,
                sign_payload: settings.signs_payload(),
                attempt_timeout: Duration::from_secs(settings.request_timeout_seconds),
                write_probe_every: std::time::Duration::from_secs(
                    settings.health_write_probe_seconds,
                ),
                last_write_probe: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The object key of a blob.
    pub fn key_of(&self, address: &ContentAddress) -> String {
        format!("{}{}", self.inner.prefix, address.storage_key())
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The underlying client, for tests and tools that must reach behind the store's back.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// The address a blob key names under `prefix`, or `None` for keys that are not blobs.
fn parse_key(prefix: &str, key: &str) -> Option<ContentAddress> {
    let rest = key.strip_prefix(prefix)?;
    let mut parts = rest.split('/');
    let algorithm = match parts.next()? {
        "blake3" => Algorithm::Blake3,
        "sha256" => Algorithm::Sha256,
        _ => return None,
    };
    let (a, b, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || a.len() != 2 || b.len() != 2 || !hex.starts_with(a) {
        return None;
    }
    let digest = Digest::from_hex(hex).ok()?;
    let address = ContentAddress::new(algorithm, digest);
    (address.storage_key() == rest).then_some(address)
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    fn id(&self) -> &str {
        &self.inner.id
    }

    async fn stage(&self) -> Result<Box<dyn StagedBlob>> {
        self.stage_with(WriteHint::default()).await
    }

    async fn stage_with(&self, hint: WriteHint) -> Result<Box<dyn StagedBlob>> {
        // One streamed PUT instead of parts when the body may go unsigned (a stream cannot be
        // signed) and S3 takes it in one request.
        if let Some(size) = hint.size
            && !self.inner.sign_payload
            && size > self.inner.threshold
            && size <= MAX_SINGLE_PUT
        {
            return Ok(Box::new(streamed::S3Streamed::start(
                self.inner.clone(),
                size,
                hint.expected,
            )));
        }
        Ok(Box::new(S3Staged {
            inner: self.inner.clone(),
            buffer: BytesMut::new(),
            written: 0,
            multipart: None,
            expected: hint.expected,
        }))
    }

    fn capabilities(&self) -> crate::storage::Capabilities {
        crate::storage::Capabilities {
            remote: true,
            buffered_up_to: self.inner.threshold,
        }
    }

    fn pieces(&self) -> Option<Arc<dyn crate::storage::PiecedStaging>> {
        Some(Arc::new(pieces::S3Pieces {
            inner: self.inner.clone(),
        }))
    }

    async fn get(&self, address: &ContentAddress, range: Option<ByteRange>) -> Result<ByteStream> {
        let inner = &self.inner;
        let mut request = inner
            .client
            .get_object()
            .bucket(&inner.bucket)
            .key(self.key_of(address));
        match range {
            Some(r) if r.length == 0 => return Ok(futures::stream::empty().boxed()),
            Some(r) => {
                request = request.range(format!("bytes={}-{}", r.offset, r.offset + r.length - 1))
            }
            None => {}
        }
        let response = request
            .send()
            .await
            .map_err(|e| match inner.error("get", e) {
                Error::NotFound { .. } => Error::not_found("blob", address),
                other => other,
            })?;
        let body = response.body;
        Ok(futures::stream::try_unfold(body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(bytes)) => Ok(Some((bytes, body))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e)),
            }
        })
        .boxed())
    }

    async fn head(&self, address: &ContentAddress) -> Result<Option<u64>> {
        self.inner.head_key(&self.key_of(address)).await
    }

    async fn delete(&self, address: &ContentAddress) -> Result<()> {
        self.inner.delete_key(&self.key_of(address)).await
    }

    fn list(&self) -> BoxStream<'static, Result<BlobInfo>> {
        let inner = self.inner.clone();
        let prefixes = [Algorithm::Blake3, Algorithm::Sha256]
            .map(|a| format!("{}{}/", inner.prefix, a.as_str()));
        futures::stream::iter(prefixes)
            .flat_map(move |prefix| {
                let inner = inner.clone();
                let pages = inner
                    .client
                    .list_objects_v2()
                    .bucket(&inner.bucket)
                    .prefix(prefix)
                    .into_paginator()
                    .send();
                futures::stream::unfold(pages, |mut pages| async move {
                    pages.next().await.map(|page| (page, pages))
                })
                .flat_map(move |page| {
                    let items: Vec<Result<BlobInfo>> = match page {
                        Err(e) => vec![Err(inner.error("listing", e))],
                        Ok(page) => page
                            .contents()
                            .iter()
                            .filter_map(|o| {
                                // Stray keys that are not blob addresses are not blobs.
                                let address = parse_key(&inner.prefix, o.key()?)?;
                                Some(Ok(BlobInfo {
                                    address,
                                    size: o.size().unwrap_or(0).max(0) as u64,
                                }))
                            })
                            .collect(),
                    };
                    futures::stream::iter(items)
                })
            })
            .boxed()
    }

    async fn sweep_staging(&self, cutoff: std::time::SystemTime) -> Result<usize> {
        S3Store::sweep_staging(self, cutoff).await
    }

    async fn health(&self) -> BackendHealth {
        let inner = &self.inner;
        let probe = format!("{}.health/{}", inner.prefix, uuid::Uuid::new_v4());
        let result = async {
            inner
                .client
                .head_bucket()
                .bucket(&inner.bucket)
                .send()
                .await
                .map_err(|e| inner.error("bucket", e))?;
            let probed_lately = inner
                .last_write_probe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < inner.write_probe_every);
            if !probed_lately {
                inner.put_final(&probe, Bytes::from_static(b"ok")).await?;
                inner.delete_key(&probe).await?;
                *inner
                    .last_write_probe
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            }
            Ok::<_, Error>(())
        }
        .await;
        BackendHealth {
            backend_id: inner.id.clone(),
            healthy: result.is_ok(),
            detail: match result {
                Ok(()) => format!("bucket `{}` reachable and writable", inner.bucket),
                Err(e) => e.to_string(),
            },
            free_bytes: None,
            total_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strays_are_ignored() {
        let address = crate::identity::DualHasher::digest(b"x").primary_address();
        let key = format!("blobs/{}", address.storage_key());
        assert!(key.starts_with("blobs/blake3/"), "{key}");
        assert_eq!(parse_key("blobs/", &key), Some(address));
        for stray in [
            "blobs/blake3/aa/bb/not-hex",
            "blobs/.staging/123",
            "other/blake3/aa/bb/cc",
            &key.replace("blobs/blake3/", "blobs/blake3/00/"),
        ] {
            assert_eq!(parse_key("blobs/", stray), None, "{stray}");
        }
    }
}

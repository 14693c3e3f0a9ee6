//! The Rust client of artifact-store.
//!
//! [`Client`] is generated at build time by [progenitor](https://docs.rs/progenitor) from the
//! server's committed OpenAPI spec: every operation, typed ([`types`]). [`Store`] wraps it with
//! what streaming needs: files uploaded from disk by session with resume, downloads written to a
//! path with their digests verified, the event log as a stream, and problems as [`StoreError`].
//!
//! ```no_run
//! # async fn example() -> Result<(), artifactstore_client::StoreError> {
//! use artifactstore_client::{Store, UploadOptions, types};
//! let store = Store::new("http://127.0.0.1:8000", "dev-token")?;
//! let package = store
//!     .call(store.api().create_package(&types::CreatePackage {
//!         producer: "ci".into(),
//!         subject: "commit-abc123".into(),
//!         retention_class: None,
//!         metadata: Default::default(),
//!     }))
//!     .await?;
//! let file = store
//!     .upload_file(package.id, "dist/app.tar.gz", "dist/app.tar.gz".as_ref(), UploadOptions::default())
//!     .await?;
//! store.download(file.id, "/tmp/app.tar.gz".as_ref(), None).await?;
//! # Ok(()) }
//! ```

// Errors carry the whole problem document (~250 bytes): large, but only on the error path.
#![allow(clippy::result_large_err)]

#[allow(
    missing_docs,
    unused_imports,
    clippy::all,
    clippy::pedantic,
    clippy::too_many_lines,
    rustdoc::all
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub use generated::*;

use futures::{Stream, StreamExt};
use sha2::Digest as _;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

/// What went wrong with a call.
#[derive(Debug)]
pub enum StoreError {
    /// The server refused or could not answer: its RFC 7807 problem.
    Problem {
        /// The HTTP status.
        status: u16,
        /// The problem document (`detail`, `request_id`, `offset`...).
        problem: types::Problem,
        /// `Retry-After`, in seconds, where the server said.
        retry_after: Option<u64>,
    },
    /// The server could not be reached, or the connection broke.
    Transport(String),
    /// A local file could not be read or written.
    Io(std::io::Error),
    /// Bytes whose digest is not the one named; nothing was written.
    DigestMismatch(String),
    /// An answer this client does not understand.
    Unexpected(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Problem {
                status, problem, ..
            } => {
                write!(f, "{} ({status})", problem.detail)?;
                if let Some(id) = &problem.request_id {
                    write!(f, " [request {id}]")?;
                }
                Ok(())
            }
            StoreError::Transport(e) => write!(f, "{e}"),
            StoreError::Io(e) => write!(f, "{e}"),
            StoreError::DigestMismatch(e) | StoreError::Unexpected(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

impl StoreError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            StoreError::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth trying again: the connection broke, or the server said 503 or 429.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Transport(_)) || matches!(self.status(), Some(503 | 429))
    }

    async fn from_api(error: Error<ByteStream>) -> Self {
        match error {
            Error::ErrorResponse(response) => {
                let (status, retry_after) =
                    (response.status().as_u16(), retry_after(response.headers()));
                let mut body = Vec::new();
                let mut stream = response.into_inner();
                while let Some(Ok(chunk)) = stream.next().await {
                    body.extend_from_slice(&chunk);
                    if body.len() > 64 * 1024 {
                        break;
                    }
                }
                Self::problem(status, &body, retry_after)
            }
            Error::UnexpectedResponse(response) => {
                let (status, retry_after) =
                    (response.status().as_u16(), retry_after(response.headers()));
                let body = response.bytes().await.unwrap_or_default();
                Self::problem(status, &body, retry_after)
            }
            Error::CommunicationError(e) | Error::ResponseBodyError(e) => {
                StoreError::Transport(e.to_string())
            }
            other => StoreError::Unexpected(other.to_string()),
        }
    }

    fn problem(status: u16, body: &[u8], retry_after: Option<u64>) -> Self {
        let problem = serde_json::from_slice(body).unwrap_or_else(|_| types::Problem {
            detail: String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
            instance: None,
            limit: None,
            offset: None,
            quota: None,
            request_id: None,
            status,
            title: String::new(),
            type_: "about:blank".into(),
            used: None,
        });
        StoreError::Problem {
            status,
            problem,
            retry_after,
        }
    }
}

/// How [`Store::upload_file`] goes about it.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// An upload session to resume (from `create_upload`, or an interrupted call).
    pub session: Option<Uuid>,
    /// Bytes per PATCH.
    pub chunk_size: u64,
    /// The file's media type (else the server guesses `application/octet-stream`).
    pub media_type: Option<String>,
    /// Replace a file already at the path.
    pub replace: bool,
    /// Failed chunks in a row before giving up.
    pub attempts: u32,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            session: None,
            chunk_size: 16 << 20,
            media_type: None,
            replace: false,
            attempts: 8,
        }
    }
}

/// The generated client with a token, and the streaming helpers.
#[derive(Clone, Debug)]
pub struct Store {
    api: Client,
}

impl Store {
    /// A client for the server at `base_url` (`http://host:port`) with a bearer token.
    pub fn new(base_url: &str, token: &str) -> Result<Self, StoreError> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| StoreError::Unexpected("the token is not valid header text".into()))?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(std::time::Duration::from_secs(10))
            // Longer than any long-poll's wait: a connection that stays silent past it is dead.
            .read_timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| StoreError::Transport(e.to_string()))?;
        Ok(Store {
            api: Client::new_with_client(base_url.trim_end_matches('/'), http),
        })
    }

    /// A client for the server at `base_url` that sends no token (a server in dev mode, or
    /// the probes).
    pub fn without_token(base_url: &str) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // Longer than any long-poll's wait: a connection that stays silent past it is dead.
            .read_timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| StoreError::Transport(e.to_string()))?;
        Ok(Store {
            api: Client::new_with_client(base_url.trim_end_matches('/'), http),
        })
    }

    /// The generated client: every operation of the spec.
    pub fn api(&self) -> &Client {
        &self.api
    }

    /// Awaits a generated call, turning a refusal into [`StoreError::Problem`].
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<ResponseValue<T>, Error<ByteStream>>>,
    ) -> Result<T, StoreError> {
        match call.await {
            Ok(value) => Ok(value.into_inner()),
            Err(e) => Err(StoreError::from_api(e).await),
        }
    }

    /// Uploads a file on disk through an upload session, in chunks, and completes it. The
    /// file's BLAKE3 goes with the session (the server refuses other bytes); a chunk that fails
    /// (connection lost, 503) is resumed from the offset the session holds, up to
    /// `options.attempts` times in a row, and a chunk the server answers 416 (the session is
    /// elsewhere) goes on from the offset it names.
    pub async fn upload_file(
        &self,
        package: Uuid,
        relative_path: &str,
        source: &Path,
        options: UploadOptions,
    ) -> Result<types::FileInfo, StoreError> {
        let size = tokio::fs::metadata(source).await?.len();
        let upload = match options.session {
            Some(id) => self.call(self.api.get_upload(&id)).await?,
            None => {
                let digest = format!("blake3:{}", blake3_of(source).await?);
                let invalid = |e: &dyn std::fmt::Display| StoreError::Unexpected(e.to_string());
                let request = types::CreateUpload {
                    package_id: package,
                    relative_path: relative_path.parse().map_err(|e| invalid(&e))?,
                    size: Some(size),
                    expected_digest: Some(digest.parse().map_err(|e| invalid(&e))?),
                    media_type: options.media_type.clone(),
                    replace: Some(options.replace),
                };
                self.call(self.api.create_upload(&request)).await?
            }
        };
        let mut file = tokio::fs::File::open(source).await?;
        let (mut offset, mut failures) = (upload.offset, 0);
        while offset < size {
            let length = options.chunk_size.max(1).min(size - offset);
            let mut chunk = vec![0; usize::try_from(length).expect("a chunk fits in memory")];
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            file.read_exact(&mut chunk).await?;
            let range = format!("bytes {offset}-{}/{size}", offset + length - 1);
            let range: types::AppendUploadContentRange = range
                .parse()
                .map_err(|e| StoreError::Unexpected(format!("{e}")))?;
            match self
                .call(self.api.append_upload(&upload.id, &range, chunk))
                .await
            {
                Ok(answer) => (offset, failures) = (answer.offset, 0),
                Err(StoreError::Problem {
                    status: 416,
                    problem:
                        types::Problem {
                            offset: Some(at), ..
                        },
                    ..
                }) => offset = at,
                Err(e) if e.is_retriable() && failures + 1 < options.attempts => {
                    failures += 1;
                    // 429: the session is busy (another chunk, or the claim of a server that
                    // died mid-chunk, which lapses within seconds); 503, a lost connection.
                    let backoff =
                        std::time::Duration::from_millis((100 << failures.min(6)).min(5000));
                    let asked = match &e {
                        StoreError::Problem {
                            retry_after: Some(s),
                            ..
                        } => std::time::Duration::from_secs((*s).min(60)),
                        _ => std::time::Duration::ZERO,
                    };
                    let wait = backoff.max(asked);
                    tokio::time::sleep(wait).await;
                    offset = self.call(self.api.get_upload(&upload.id)).await?.offset;
                }
                Err(e) => return Err(e),
            }
        }
        self.call(self.api.complete_upload(&upload.id)).await
    }

    /// Streams a file to `destination`, hashing as it goes: the bytes must have the BLAKE3 and
    /// SHA-256 the server records (and `expected`, `blake3:<hex>` or `sha256:<hex>`, if
    /// given), else [`StoreError::DigestMismatch`] and nothing is written. The file appears
    /// at `destination` whole or not at all (a scratch file beside it is renamed).
    pub async fn download(
        &self,
        file: Uuid,
        destination: &Path,
        expected: Option<&str>,
    ) -> Result<types::FileInfo, StoreError> {
        let info = self.call(self.api.get_file(&file)).await?;
        if let Some(expected) = expected {
            let named = match expected.split_once(':') {
                Some(("blake3", hex)) => (&info.digests.blake3, hex),
                Some(("sha256", hex)) => (&info.digests.sha256, hex),
                _ => {
                    return Err(StoreError::Unexpected(format!(
                        "`{expected}` is not blake3:<hex> or sha256:<hex>"
                    )));
                }
            };
            if !named.0.eq_ignore_ascii_case(named.1) {
                return Err(StoreError::DigestMismatch(format!(
                    "file {file} is {}, not {expected}",
                    named.0
                )));
            }
        }
        let name = destination
            .file_name()
            .ok_or_else(|| StoreError::Unexpected("the destination names no file".into()))?;
        let scratch = destination.with_file_name(format!(
            ".{}.{}.partial",
            name.to_string_lossy(),
            Uuid::new_v4().simple()
        ));
        let written = self.download_into(file, &scratch, &info).await;
        match written {
            Ok(()) => {
                tokio::fs::rename(&scratch, destination).await?;
                Ok(info)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&scratch).await;
                Err(e)
            }
        }
    }

    async fn download_into(
        &self,
        file: Uuid,
        scratch: &Path,
        info: &types::FileInfo,
    ) -> Result<(), StoreError> {
        let mut body = self.call(self.api.download_file(&file, None, None)).await?;
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(scratch)
            .await?;
        let (mut b3, mut sha) = (blake3::Hasher::new(), sha2::Sha256::new());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Transport(e.to_string()))?;
            b3.update(&chunk);
            sha.update(&chunk);
            out.write_all(&chunk).await?;
        }
        out.sync_all().await?;
        let (b3, sha) = (
            b3.finalize().to_hex().to_string(),
            hex::encode(sha.finalize()),
        );
        if b3 != info.digests.blake3 || sha != info.digests.sha256 {
            return Err(StoreError::DigestMismatch(format!(
                "file {file}: received blake3:{b3} sha256:{sha}, the server records blake3:{} sha256:{}",
                info.digests.blake3, info.digests.sha256
            )));
        }
        Ok(())
    }

    /// The tenant's events after `since`, in order. With `follow`, long-polls for new ones
    /// forever (`wait` seconds each); without, ends at the end of the log.
    pub fn events(
        &self,
        since: i64,
        follow: bool,
        wait: u32,
    ) -> impl Stream<Item = Result<types::EventJson, StoreError>> + '_ {
        futures::stream::try_unfold(
            (since, Vec::<types::EventJson>::new(), false),
            move |(mut since, mut pending, mut done)| async move {
                loop {
                    if let Some(event) = pending.pop() {
                        return Ok(Some((event, (since, pending, done))));
                    }
                    if done {
                        return Ok(None);
                    }
                    let page = self
                        .call(self.api.list_events(
                            None,
                            Some(since),
                            None,
                            Some(if follow { wait } else { 0 }),
                        ))
                        .await?;
                    since = page.next_since;
                    done = !follow && page.events.is_empty();
                    pending = page.events;
                    pending.reverse();
                }
            },
        )
    }
}

/// `Retry-After` in seconds, where the server said.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers.get("retry-after")?.to_str().ok()?.parse().ok()
}

async fn blake3_of(source: &Path) -> Result<String, StoreError> {
    let source = source.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(source)?)?;
        Ok(hasher.finalize().to_hex().to_string())
    })
    .await
    .map_err(|e| StoreError::Unexpected(e.to_string()))?
    .map_err(StoreError::Io)
}

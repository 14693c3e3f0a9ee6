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
//!     .call(
//!         store
//!             .api()
//!             .create_package()
//!             .body(types::CreatePackage {
//!                 producer: "ci".parse().expect("a valid producer"),
//!                 subject: "commit-abc123".parse().expect("a valid subject"),
//!                 retention_class: None,
//!                 metadata: Default::default(),
//!             })
//!             .send(),
//!     )
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
    /// The server could not be reached (connection refused, DNS, connect timeout).
    Unreachable(String),
    /// The connection broke, or a body could not be sent or read.
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
            StoreError::Unreachable(e) | StoreError::Transport(e) => write!(f, "{e}"),
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

    /// Worth trying again: the server unreachable, the connection broken, or the server (or a
    /// load balancer before it) saying 429, 502, 503 or 504.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Unreachable(_) | StoreError::Transport(_))
            || matches!(self.status(), Some(429 | 502..=504))
    }

    /// How long to wait before try `n` (1, 2, ...) after this failure: doubling from 200 ms, at
    /// most 5 s, and at least what `Retry-After` said (at most a minute).
    pub fn retry_wait(&self, n: u32) -> std::time::Duration {
        let backoff = std::time::Duration::from_millis((100u64 << n.min(6)).min(5000));
        match self {
            StoreError::Problem {
                retry_after: Some(s),
                ..
            } => backoff.max(std::time::Duration::from_secs((*s).min(60))),
            _ => backoff,
        }
    }

    /// A refusal read from a response this client did not expect or made by hand: its status,
    /// the problem in (the first 64 KiB of) its body, its `Retry-After`.
    pub async fn from_response(response: reqwest::Response) -> Self {
        let (status, retry_after) = (response.status().as_u16(), retry_after(response.headers()));
        let body = head_of(response.bytes_stream()).await;
        Self::problem(status, &body, retry_after)
    }

    async fn from_api(error: Error<ByteStream>) -> Self {
        match error {
            Error::ErrorResponse(response) => {
                let (status, retry_after) =
                    (response.status().as_u16(), retry_after(response.headers()));
                let body = head_of(response.into_inner().into_inner()).await;
                Self::problem(status, &body, retry_after)
            }
            Error::UnexpectedResponse(response) => Self::from_response(response).await,
            Error::CommunicationError(e) | Error::ResponseBodyError(e) => Self::transport(&e),
            other => StoreError::Unexpected(other.to_string()),
        }
    }

    /// A transport failure: unreachable (connect, DNS, timeout) or broken.
    pub fn transport(e: &reqwest::Error) -> Self {
        // The whole cause chain: "error sending request" alone says nothing.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        if e.is_connect() || e.is_timeout() {
            StoreError::Unreachable(text)
        } else {
            StoreError::Transport(text)
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
            attempts: 12,
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
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| StoreError::Unexpected("the token is not valid header text".into()))?;
        auth.set_sensitive(true);
        Self::with_auth(base_url, Some(auth))
    }

    /// A client for the server at `base_url` that sends no token (a server in dev mode, or
    /// the probes).
    pub fn without_token(base_url: &str) -> Result<Self, StoreError> {
        Self::with_auth(base_url, None)
    }

    fn with_auth(
        base_url: &str,
        auth: Option<reqwest::header::HeaderValue>,
    ) -> Result<Self, StoreError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(auth) = auth {
            headers.insert(reqwest::header::AUTHORIZATION, auth);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(std::time::Duration::from_secs(10))
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
            Some(id) => self.call(self.api.get_upload().id(id).send()).await?,
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
                self.call(self.api.create_upload().body(request).send())
                    .await?
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
                .call(
                    self.api
                        .append_upload()
                        .id(upload.id)
                        .content_range(range)
                        .body(chunk)
                        .send(),
                )
                .await
            {
                Ok(answer) => (offset, failures) = (answer.offset, 0),
                // The session is elsewhere than this chunk thought: go on from there (the same
                // offset again would be no progress, and is an error).
                Err(StoreError::Problem {
                    status: 416,
                    problem:
                        types::Problem {
                            offset: Some(at), ..
                        },
                    ..
                }) if at != offset => offset = at,
                Err(e) if e.is_retriable() && failures + 1 < options.attempts => {
                    failures += 1;
                    tokio::time::sleep(e.retry_wait(failures)).await;
                    // Where the session is now; a failure to ask is this try's.
                    if let Ok(state) = self.call(self.api.get_upload().id(upload.id).send()).await {
                        offset = state.offset;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // Completing is retried the same way (429: a completion still running, say one whose
        // answer was lost); a session gone after such a try may have become the file.
        let mut failures = 0;
        loop {
            match self
                .call(self.api.complete_upload().id(upload.id).send())
                .await
            {
                Ok(file) => return Ok(file),
                Err(e) if e.is_retriable() && failures + 1 < options.attempts => {
                    failures += 1;
                    tokio::time::sleep(e.retry_wait(failures)).await;
                }
                Err(e) if failures > 0 && e.status() == Some(404) => {
                    let digest = blake3_of(source).await?;
                    let package = self
                        .call(self.api.get_package().id(upload.package_id).send())
                        .await?;
                    return package
                        .files
                        .into_iter()
                        .find(|f| {
                            f.relative_path == upload.relative_path && f.digests.blake3 == digest
                        })
                        .ok_or(e);
                }
                Err(e) => return Err(e),
            }
        }
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
        let info = self.call(self.api.get_file().id(file).send()).await?;
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
        let mut body = self.call(self.api.download_file().id(file).send()).await?;
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

    /// One page of the tenant's events after `since` (of types starting with `type_prefix`),
    /// waiting up to `wait` seconds for the first. A server that stays silent 30 s past the
    /// wait is given up on ([`StoreError::Transport`]).
    pub async fn events_page(
        &self,
        since: i64,
        type_prefix: Option<&str>,
        wait: u32,
    ) -> Result<types::EventPage, StoreError> {
        let patience = std::time::Duration::from_secs(u64::from(wait) + 30);
        let mut request = self.api.list_events().since(since).wait(wait);
        if let Some(prefix) = type_prefix {
            request = request.type_(prefix);
        }
        let page = self.call(request.send());
        tokio::time::timeout(patience, page)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Transport(format!(
                    "no answer to a {wait} s long-poll within {} s",
                    patience.as_secs()
                )))
            })
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
                        .events_page(since, None, if follow { wait } else { 0 })
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

/// A request body streamed from `stream` that declares its length (`Content-Length`), so the
/// server can refuse what would not fit (quota, disk) before any byte is sent. `stream` must
/// yield exactly `length` bytes.
pub fn sized_body<S>(stream: S, length: u64) -> reqwest::Body
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + Unpin + 'static,
{
    reqwest::Body::wrap(Sized { stream, length })
}

struct Sized<S> {
    stream: S,
    length: u64,
}

impl<S> http_body::Body for Sized<S>
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        std::pin::Pin::new(&mut self.stream)
            .poll_next(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(http_body::Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

/// The first 64 KiB of an error answer's body: a problem document is far smaller, and
/// whatever else a server (or a proxy before it) sends is not read whole.
async fn head_of<S, E>(stream: S) -> Vec<u8>
where
    S: Stream<Item = Result<bytes::Bytes, E>>,
{
    const MOST: usize = 64 * 1024;
    let mut body = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk[..chunk.len().min(MOST - body.len())]);
        if body.len() >= MOST {
            break;
        }
    }
    body
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

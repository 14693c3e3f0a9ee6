//! Where bytes live. The registry sees only [`BlobStore`]: staged streaming writes committed
//! under a content address, ranged reads, head, idempotent delete, list and health. No backend
//! vocabulary (buckets, multipart) leaks past this module.

pub mod checked;
pub mod config;
pub mod local;
pub mod measured;
pub mod s3;

use crate::error::Result;
use crate::identity::{ContentAddress, Digest};
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;

/// A stream of byte chunks.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A byte range already resolved against the blob's size: `length` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// What committing a staged write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The bytes are now stored under the address.
    Stored,
    /// The address already held these bytes; the staged copy was dropped.
    AlreadyPresent,
}

/// One stored blob, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its address.
    pub address: ContentAddress,
    /// Its stored size.
    pub size: u64,
}

/// A backend's health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendHealth {
    /// Backend id.
    pub backend_id: String,
    /// Whether reads and writes can be expected to work.
    pub healthy: bool,
    /// A human-readable summary.
    pub detail: String,
    /// Free bytes, where the backend knows.
    pub free_bytes: Option<u64>,
    /// Capacity, where the backend knows.
    pub total_bytes: Option<u64>,
}

/// What is known about a staged write before its first byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteHint {
    /// Exactly this many bytes will be written (a request's Content-Length, a spooled file).
    pub size: Option<u64>,
    /// The address the bytes are announced to have (the client sent the digest, or the bytes
    /// were hashed already). Still only a claim: whoever commits checks it first.
    pub expected: Option<ContentAddress>,
}

/// What a backend is like, for the registry's policies (which writes stream into it as they
/// arrive, what a write takes of this server's disk). The backend describes itself; the
/// registry decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Its bytes live on another machine: storing a file this server already holds (a spooled
    /// upload) sends every byte again. False for a backend on this server's filesystems,
    /// which [adopts](BlobStore::adopt_file) a file by moving it.
    pub remote: bool,
    /// Staged writes up to this size are buffered in memory and stored in one request, so
    /// streaming them as they arrive gains nothing.
    pub buffered_up_to: u64,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            remote: false,
            buffered_up_to: u64::MAX,
        }
    }
}

/// Bytes being written whose address is not known yet. Nothing is visible under any address
/// until [`StagedBlob::commit`]; dropping without commit leaves only staging data, which
/// [`StagedBlob::abort`] or garbage collection removes.
#[async_trait::async_trait]
pub trait StagedBlob: Send {
    /// Appends a chunk.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Does the slow part of [`commit`](Self::commit) ahead of it, so that commit itself, which
    /// runs while the blob's collection lock is held, is quick: e.g. makes the bytes durable
    /// unless `address` is stored already. Nothing becomes visible. Optional: commit is
    /// complete without it.
    async fn prepare(&mut self, _address: &ContentAddress) -> Result<()> {
        Ok(())
    }
    /// Makes the bytes durable and visible under `address`.
    async fn commit(self: Box<Self>, address: &ContentAddress) -> Result<CommitOutcome>;
    /// Discards the staged bytes.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The sizes of the pieces a [`PiecedStaging`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceSizes {
    /// Every piece but the last must hold at least this many bytes.
    pub min: u64,
    /// The largest piece a writer should send (what it buffers in memory per piece).
    pub max: u64,
    /// The highest piece number.
    pub max_number: u32,
    /// Pieces a writer should have in flight at once (each holds `max` bytes of memory).
    pub in_flight: usize,
}

/// A staged write assembled from numbered pieces that any server may add: for upload sessions
/// whose chunks reach different servers. Its whole state in the backend is named by a token,
/// which the registry records with the session together with the receipts of the pieces it
/// keeps. Pieces need not arrive in order or all be kept: only the pieces passed to
/// [`join`](Self::join) make up the staged bytes, in ascending number. Nothing is visible
/// under any address until [`commit`](Self::commit).
#[async_trait::async_trait]
pub trait PiecedStaging: Send + Sync {
    /// The sizes of the pieces.
    fn sizes(&self) -> PieceSizes;
    /// Begins a staged write for the upload session `session`; its token.
    async fn begin(&self, session: uuid::Uuid) -> Result<String>;
    /// Stores piece `number` (1 to `max_number`); its receipt.
    async fn put(&self, token: &str, number: u32, bytes: Bytes) -> Result<String>;
    /// Joins `pieces` (number, receipt; ascending) into the staged bytes, `size` in all.
    /// Joining again after a join that succeeded (a completion run twice) succeeds.
    async fn join(&self, token: &str, pieces: Vec<(u32, String)>, size: u64) -> Result<()>;
    /// The joined bytes.
    async fn read(&self, token: &str) -> Result<ByteStream>;
    /// Makes the joined bytes (checked by the caller to be `address`) visible under `address`.
    /// The staged write stays (committing again succeeds) until [`abort`](Self::abort).
    async fn commit(
        &self,
        token: &str,
        address: &ContentAddress,
        size: u64,
    ) -> Result<CommitOutcome>;
    /// Discards the staged write, joined or not; discarding one that is gone succeeds.
    async fn abort(&self, token: &str) -> Result<()>;
    /// Every staged write there is, joined or not: its session and token (to discard those
    /// whose session is gone).
    async fn stages(&self) -> Result<Vec<(uuid::Uuid, String)>>;
}

/// A storage backend. Object safe: the registry holds `Arc<dyn BlobStore>`.
///
/// The required core: [`id`](Self::id), [`stage`](Self::stage), [`get`](Self::get),
/// [`head`](Self::head), [`delete`](Self::delete), [`list`](Self::list),
/// [`sweep_staging`](Self::sweep_staging), [`health`](Self::health). Everything else has a
/// default built on it.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// The backend's configured id (recorded in `storage_locations.backend_id`).
    fn id(&self) -> &str;
    /// Starts a staged write.
    async fn stage(&self) -> Result<Box<dyn StagedBlob>>;

    /// Streams the blob, or a range of it. A missing blob is `Error::NotFound`.
    async fn get(&self, address: &ContentAddress, range: Option<ByteRange>) -> Result<ByteStream>;
    /// The stored size, or `None` when absent.
    async fn head(&self, address: &ContentAddress) -> Result<Option<u64>>;
    /// Deletes the blob; deleting an absent blob succeeds.
    async fn delete(&self, address: &ContentAddress) -> Result<()>;
    /// Every stored blob, in no particular order.
    fn list(&self) -> BoxStream<'static, Result<BlobInfo>>;
    /// Reachability and capacity.
    async fn health(&self) -> BackendHealth;

    /// Removes staged writes begun before `cutoff` (abandoned by a crash or a killed request);
    /// returns how many were removed.
    async fn sweep_staging(&self, cutoff: std::time::SystemTime) -> Result<usize>;

    // What follows has defaults built on the core above; a backend overrides what it can do
    // better (a single request, a rename, a hash it computes while reading).

    /// What the backend is like (see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Starts a staged write with what is known of it before the first byte (see
    /// [`WriteHint`]). A backend may use the size to send the bytes in one request, and may
    /// then fail a write of another length; it may use the announced address to write the bytes
    /// straight to their place, but must still make nothing visible under it unless the write
    /// is committed under that very address, and may fail a commit under another one. The
    /// default is [`BlobStore::stage`].
    async fn stage_with(&self, hint: WriteHint) -> Result<Box<dyn StagedBlob>> {
        let _ = hint;
        self.stage().await
    }
    /// Streams the whole blob, checking it as it goes against `size` bytes hashing to
    /// `expected` (its BLAKE3 digest): the last chunk is held back until the check passes, and
    /// on a mismatch the stream ends in an error instead. A missing blob is
    /// `Error::NotFound`. The default hashes [`get`](Self::get)'s stream as it passes.
    async fn get_checked(
        &self,
        address: &ContentAddress,
        expected: Digest,
        size: u64,
    ) -> Result<ByteStream> {
        let body = self.get(address, None).await?;
        Ok(checked::checked(
            body,
            expected,
            size,
            format!("{address} on `{}`", self.id()),
        ))
    }
    /// The BLAKE3 digest and size of the bytes as stored, read back in full (what `verify`
    /// and `storage migrate` check). A missing blob is `Error::NotFound`. The default hashes
    /// [`get`](Self::get)'s stream.
    async fn read_digest(&self, address: &ContentAddress) -> Result<(Digest, u64)> {
        let stream = self.get(address, None).await?;
        checked::blake3_of(stream)
            .await
            .map_err(|e| crate::Error::storage(self.id(), format!("reading {address}: {e}")))
    }
    /// Staged writes in pieces that any server may add (see [`PiecedStaging`]), if the
    /// backend keeps them itself (S3); `None` for a backend on this server's disk.
    fn pieces(&self) -> Option<Arc<dyn PiecedStaging>> {
        None
    }
    /// Free bytes where this backend writes, when it shares a filesystem with this server (a
    /// local backend) and so can fill it; `None` otherwise (S3 manages its own capacity).
    async fn free_bytes(&self) -> Option<u64> {
        None
    }

    /// Whether [`adopt_file`](Self::adopt_file) takes `path` without writing its bytes again
    /// (a rename within one filesystem), so it needs no free space.
    async fn adopts_in_place(&self, path: &std::path::Path) -> bool {
        let _ = path;
        false
    }

    /// Stores the bytes of a complete local file (already verified to be `address`). The file
    /// is consumed: moved if the backend can, else copied and removed. The default streams it
    /// through a staged write.
    async fn adopt_file(
        &self,
        path: &std::path::Path,
        address: &ContentAddress,
    ) -> Result<CommitOutcome> {
        use futures::StreamExt;
        let file = tokio::fs::File::open(path).await.map_err(|e| {
            crate::Error::storage(self.id(), format!("opening {}: {e}", path.display()))
        })?;
        let size = file
            .metadata()
            .await
            .map_err(|e| {
                crate::Error::storage(self.id(), format!("reading {}: {e}", path.display()))
            })?
            .len();
        let mut staged = self
            .stage_with(WriteHint {
                size: Some(size),
                expected: Some(*address),
            })
            .await?;
        let mut chunks = local::file_stream(file.into_std().await, u64::MAX);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                crate::Error::storage(self.id(), format!("reading {}: {e}", path.display()))
            })?;
            staged.write(chunk).await?;
        }
        let outcome = staged.commit(address).await?;
        let _ = tokio::fs::remove_file(path).await;
        Ok(outcome)
    }
}

/// The configured backends, by id, and the default one new packages go to.
#[derive(Debug, Clone)]
pub struct Backends {
    default: Arc<dyn BlobStore>,
    all: Vec<Arc<dyn BlobStore>>,
    routes: Vec<config::Route>,
}

impl Backends {
    /// One backend that is also the default.
    pub fn single(store: Arc<dyn BlobStore>) -> Self {
        let store = measured::Measured::wrap(store);
        Backends {
            default: store.clone(),
            all: vec![store],
            routes: Vec::new(),
        }
    }

    /// The backend new blobs are written to.
    pub fn default_backend(&self) -> &Arc<dyn BlobStore> {
        &self.default
    }

    /// A backend by id.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn BlobStore>> {
        self.all.iter().find(|b| b.id() == id)
    }

    /// All backends.
    pub fn all(&self) -> &[Arc<dyn BlobStore>] {
        &self.all
    }
}

//! Local filesystem backend: `<root>/<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>`, staged in
//! `<root>/.staging/` (same filesystem), committed with fsync, rename and a directory fsync
//! ([`publish`]: small blobs with one journal commit), read in batches on the blocking pool
//! ([`read`]).

use super::{BackendHealth, BlobInfo, BlobStore, ByteRange, ByteStream, CommitOutcome, StagedBlob};
use crate::error::{Error, Result};
use crate::identity::{Algorithm, ContentAddress, Digest};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::path::{Path, PathBuf};

mod append;
mod publish;
mod read;

pub(crate) use append::Appender;
pub use read::file_stream;

use publish::{Prepared, SMALL_BLOB_MAX, commit_file, publish_small, verify_existing};
use read::{Check, read_chunks};

const STAGING_DIR: &str = ".staging";

/// A directory of blobs.
#[derive(Debug, Clone)]
pub struct LocalStore {
    id: String,
    root: PathBuf,
    /// Whether the root held its marker ([`MARKER_FILE`]) when opened: then its health
    /// requires it still there (a shared filesystem that came unmounted leaves an empty
    /// directory behind).
    marked: bool,
}

/// The file in a local backend's root that says which directory it is (written and checked
/// by the registry: `registry/roots.rs`).
pub const MARKER_FILE: &str = ".artifactstore-root";

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(id: impl Into<String>, root: impl Into<PathBuf>) -> Result<Self> {
        let id = id.into();
        let root = root.into();
        std::fs::create_dir_all(root.join(STAGING_DIR))
            .map_err(|e| Error::storage(&id, format!("cannot create {}: {e}", root.display())))?;
        let marked = root.join(MARKER_FILE).is_file();
        Ok(LocalStore { id, root, marked })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives. Built only from a validated address: it cannot leave the root.
    pub fn path_of(&self, address: &ContentAddress) -> PathBuf {
        self.root.join(address.storage_key())
    }

    async fn open_blob(&self, address: &ContentAddress) -> Result<std::fs::File> {
        let path = self.path_of(address);
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path)?;
            // Read-ahead for a cold file; harmless when the bytes are in the page cache.
            let _ = nix::fcntl::posix_fadvise(
                &file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
            );
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| Error::storage(&self.id, e))?;
        match opened {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found("blob", address))
            }
            Err(e) => Err(self.io_error("opening blob", e)),
        }
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        if is_out_of_space(&e) {
            return Error::InsufficientStorage(format!(
                "the filesystem of backend `{}` is full ({what})",
                self.id
            ));
        }
        Error::storage(&self.id, format!("{what}: {e}"))
    }

    /// Removes staging files last modified before `cutoff` (abandoned writes); returns how many.
    pub async fn sweep_staging(&self, cutoff: std::time::SystemTime) -> Result<usize> {
        let dir = self.root.join(STAGING_DIR);
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for entry in std::fs::read_dir(&dir)?.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff);
                if old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok::<_, std::io::Error>(removed)
        })
        .await
        .map_err(|e| Error::storage(&self.id, e))?
        .map_err(|e| self.io_error("sweeping staging", e))
    }
}

#[async_trait::async_trait]
impl BlobStore for LocalStore {
    fn id(&self) -> &str {
        &self.id
    }

    async fn stage(&self) -> Result<Box<dyn StagedBlob>> {
        let path = self
            .root
            .join(STAGING_DIR)
            .join(uuid::Uuid::new_v4().to_string());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| self.io_error("creating staging file", e))?;
        Ok(Box::new(LocalStaged {
            store: self.clone(),
            path,
            appender: Some(Appender::new(file, 0)),
            written: 0,
            prepared: Prepared::Nothing,
            settled: false,
        }))
    }

    async fn get(&self, address: &ContentAddress, range: Option<ByteRange>) -> Result<ByteStream> {
        let file = self.open_blob(address).await?;
        let (offset, length) = match range {
            Some(r) => (r.offset, r.length),
            None => (0, u64::MAX),
        };
        Ok(read_chunks(file, offset, length, None))
    }

    async fn get_checked(
        &self,
        address: &ContentAddress,
        expected: Digest,
        size: u64,
    ) -> Result<ByteStream> {
        let file = self.open_blob(address).await?;
        let what = format!("{address} on `{}`", self.id);
        Ok(read_chunks(
            file,
            0,
            u64::MAX,
            Some(Check {
                expected,
                size,
                what,
            }),
        ))
    }

    async fn read_digest(&self, address: &ContentAddress) -> Result<(Digest, u64)> {
        let file = self.open_blob(address).await?;
        let hashed = tokio::task::spawn_blocking(move || read::digest_file(file))
            .await
            .map_err(|e| Error::storage(&self.id, e))?;
        hashed.map_err(|e| self.io_error(&format!("reading {address}"), e))
    }

    async fn head(&self, address: &ContentAddress) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.path_of(address)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("reading blob metadata", e)),
        }
    }

    async fn delete(&self, address: &ContentAddress) -> Result<()> {
        match tokio::fs::remove_file(self.path_of(address)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("deleting blob", e)),
        }
    }

    fn list(&self) -> BoxStream<'static, Result<BlobInfo>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let root = self.root.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || {
            for algorithm in [Algorithm::Blake3, Algorithm::Sha256] {
                if let Err(e) = walk_algorithm(&root, algorithm, &tx) {
                    let _ = tx.blocking_send(Err(Error::storage(&id, format!("listing: {e}"))));
                    return;
                }
            }
        });
        tokio_stream_from(rx)
    }

    async fn adopt_file(&self, path: &Path, address: &ContentAddress) -> Result<CommitOutcome> {
        let source = path.to_owned();
        let dest = self.path_of(address);
        let root = self.root.clone();
        let address_owned = *address;
        let adopted =
            tokio::task::spawn_blocking(move || -> std::io::Result<Option<CommitOutcome>> {
                let file = std::fs::File::open(&source)?;
                let size = file.metadata()?.len();
                match commit_file(
                    file,
                    &source,
                    &dest,
                    &address_owned,
                    size,
                    &root,
                    Prepared::Nothing,
                ) {
                    Ok(outcome) => Ok(Some(outcome)),
                    // Another filesystem: copy instead (below).
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| Error::storage(&self.id, e))?
            .map_err(|e| self.io_error("adopting file", e))?;
        match adopted {
            Some(outcome) => Ok(outcome),
            None => copy_then_commit(self, path, address).await,
        }
    }

    async fn sweep_staging(&self, cutoff: std::time::SystemTime) -> Result<usize> {
        LocalStore::sweep_staging(self, cutoff).await
    }

    async fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.root).await
    }

    async fn adopts_in_place(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (path, root) = (path.to_owned(), self.root.clone());
        tokio::task::spawn_blocking(move || {
            match (std::fs::metadata(path), std::fs::metadata(root)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev(),
                _ => false,
            }
        })
        .await
        .unwrap_or(false)
    }

    async fn health(&self) -> BackendHealth {
        let root = self.root.clone();
        let marked = self.marked;
        let stat = tokio::task::spawn_blocking(move || {
            if !root.is_dir() {
                return Err(format!("root {} is missing", root.display()));
            }
            if marked && !root.join(MARKER_FILE).is_file() {
                return Err(format!(
                    "root {} lost its {MARKER_FILE} marker: is its filesystem still mounted?",
                    root.display()
                ));
            }
            nix::sys::statvfs::statvfs(&root).map_err(|e| format!("statvfs: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match stat {
            Ok(s) => {
                let free = s.blocks_available() * s.fragment_size();
                let total = s.blocks() * s.fragment_size();
                BackendHealth {
                    backend_id: self.id.clone(),
                    healthy: true,
                    detail: format!("{} free of {}", human(free), human(total)),
                    free_bytes: Some(free),
                    total_bytes: Some(total),
                }
            }
            Err(detail) => BackendHealth {
                backend_id: self.id.clone(),
                healthy: false,
                detail,
                free_bytes: None,
                total_bytes: None,
            },
        }
    }
}

async fn copy_then_commit(
    store: &LocalStore,
    path: &Path,
    address: &ContentAddress,
) -> Result<CommitOutcome> {
    use futures::StreamExt;
    let file = std::fs::File::open(path).map_err(|e| store.io_error("opening file to adopt", e))?;
    let mut staged = store.stage().await?;
    let mut chunks = file_stream(file, u64::MAX);
    while let Some(chunk) = chunks.next().await {
        staged
            .write(chunk.map_err(|e| store.io_error("reading file to adopt", e))?)
            .await?;
    }
    let outcome = staged.commit(address).await?;
    let _ = tokio::fs::remove_file(path).await;
    Ok(outcome)
}

/// Free bytes (for unprivileged users) of the filesystem holding `path`.
pub async fn free_bytes(path: &Path) -> Option<u64> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        nix::sys::statvfs::statvfs(&path)
            .ok()
            .map(|s| s.blocks_available() * s.fragment_size())
    })
    .await
    .ok()
    .flatten()
}

/// The filesystem (or the user's quota on it) is full.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn human(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

fn walk_algorithm(
    root: &Path,
    algorithm: Algorithm,
    tx: &tokio::sync::mpsc::Sender<Result<BlobInfo>>,
) -> std::io::Result<()> {
    let base = root.join(algorithm.as_str());
    if !base.is_dir() {
        return Ok(());
    }
    for level1 in std::fs::read_dir(&base)? {
        for level2 in std::fs::read_dir(level1?.path())? {
            for entry in std::fs::read_dir(level2?.path())? {
                let entry = entry?;
                let name = entry.file_name();
                // Stray files that are not digests are not blobs.
                let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                    continue;
                };
                // A blob deleted since the directory was read (a collector at work) is gone,
                // not an error of the listing.
                let size = match entry.metadata() {
                    Ok(metadata) => metadata.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let info = BlobInfo {
                    address: ContentAddress::new(algorithm, digest),
                    size,
                };
                if tx.blocking_send(Ok(info)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

struct LocalStaged {
    store: LocalStore,
    path: PathBuf,
    /// The staging file; gone once a write or [`StagedBlob::prepare`] failed.
    appender: Option<Appender<std::fs::File>>,
    /// Bytes handed to [`StagedBlob::write`].
    written: u64,
    /// What [`StagedBlob::prepare`] did: synced the file, or found the address holding its
    /// bytes already.
    prepared: Prepared,
    /// Committed or aborted: the staging file is no longer this write's to remove on drop.
    settled: bool,
}

impl LocalStaged {
    fn appender(&mut self) -> Result<&mut Appender<std::fs::File>> {
        self.appender.as_mut().ok_or_else(|| {
            Error::storage(
                &self.store.id,
                "the staged write failed earlier; it must be aborted",
            )
        })
    }
}

#[async_trait::async_trait]
impl StagedBlob for LocalStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.written += chunk.len() as u64;
        let result = self.appender()?.write(chunk).await;
        if let Err(e) = result {
            self.appender = None;
            return Err(self.store.io_error("writing staging file", e));
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn prepare(&mut self, address: &ContentAddress) -> Result<()> {
        self.appender()?;
        let appender = self.appender.take().expect("checked above");
        let dest = self.store.path_of(address);
        let size = appender.len();
        let address = *address;
        // One trip to a blocking thread: the last buffered bytes, then the sync.
        let (file, prepared) = appender
            .finish(move |file| {
                // A small blob is synced at commit, after it is in place (see
                // `publish_small`).
                if size <= SMALL_BLOB_MAX {
                    return Ok(Prepared::Nothing);
                }
                // Bytes already stored are not ours to sync (commit will drop this copy), once
                // hashed: here, before the blob's lock and the database transaction are taken.
                if let Some(verified) = verify_existing(&dest, &address, size) {
                    return Ok(Prepared::AlreadyThere(verified));
                }
                file.sync_all().map(|()| Prepared::Synced)
            })
            .await
            .map_err(|e| self.store.io_error("writing and syncing staging file", e))?;
        self.appender = Some(Appender::new(file, size));
        self.prepared = prepared;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, address: &ContentAddress) -> Result<CommitOutcome> {
        // Until the bytes are all written, a failure drops this write and its staging file.
        let mut appender = self.appender.take().ok_or_else(|| {
            Error::storage(
                &self.store.id,
                "the staged write failed earlier; it must be aborted",
            )
        })?;
        let size = appender.len();
        appender
            .flush()
            .await
            .map_err(|e| self.store.io_error("writing staging file", e))?;
        // From here on the file is being published: a failure leaves it to the staging sweep
        // (it may already be linked or renamed under its address).
        self.settled = true;
        let file = appender.into_file();
        let staged = self.path.clone();
        let dest = self.store.path_of(address);
        let root = self.store.root.clone();
        let prepared = self.prepared;
        let address = *address;
        let outcome = tokio::task::spawn_blocking(move || {
            if size <= SMALL_BLOB_MAX {
                publish_small(file, &staged, &dest, &address, size, &root)
            } else {
                commit_file(file, &staged, &dest, &address, size, &root, prepared)
            }
        })
        .await
        .map_err(|e| Error::storage(&self.store.id, e))?;
        outcome.map_err(|e| self.store.io_error("committing blob", e))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.settled = true;
        self.appender.take();
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.store.io_error("removing staging file", e)),
        }
    }
}

impl Drop for LocalStaged {
    fn drop(&mut self) {
        // Neither committed nor aborted (the request was cancelled): remove the staging file.
        if !self.settled {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

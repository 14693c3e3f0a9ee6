//! Local filesystem backend: `<root>/<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>`, staged in
//! `<root>/.staging/` (same filesystem), committed with fsync, rename and a directory fsync.

use super::{BackendHealth, BlobInfo, BlobStore, ByteRange, ByteStream, CommitOutcome, StagedBlob};
use crate::error::{Error, Result};
use crate::identity::{Algorithm, ContentAddress, Digest};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::io::Write;
use std::path::{Path, PathBuf};

const STAGING_DIR: &str = ".staging";
/// Blobs up to this size are published with one journal commit (see `publish_small`); the
/// same size as the registry's group commit, whose batches then share commits.
const SMALL_BLOB_MAX: u64 = 1 << 20;
/// Writes are batched to this size so each trip to the blocking pool moves a lot of bytes.
pub(crate) const WRITE_BATCH: usize = 1024 * 1024;
/// Reads go to the client in chunks of this size: large enough for few system calls and
/// channel hops, small enough that a chunk just hashed is still in cache when it is sent.
const READ_CHUNK: usize = 64 * 1024;
/// Read size when a whole blob is hashed for `verify` (on every core: see `read_digest`).
const DIGEST_READ: usize = 8 * 1024 * 1024;
/// Chunks read per trip to the blocking pool.
const READ_BATCH: usize = 16;
/// Writeback is started every this many bytes, so the final fsync finds little left to flush
/// and disk writes overlap hashing and the network.
pub(crate) const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// A directory of blobs.
#[derive(Debug, Clone)]
pub struct LocalStore {
    id: String,
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(id: impl Into<String>, root: impl Into<PathBuf>) -> Result<Self> {
        let id = id.into();
        let root = root.into();
        std::fs::create_dir_all(root.join(STAGING_DIR))
            .map_err(|e| Error::storage(&id, format!("cannot create {}: {e}", root.display())))?;
        Ok(LocalStore { id, root })
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
            file: Some(file),
            buffer: BytesMut::new(),
            written: 0,
            flushed: 0,
            writeback_from: 0,
            synced: false,
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
        let mut file = self.open_blob(address).await?;
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(Digest, u64)> {
            use std::io::Read;
            // Large reads hashed on every core (BLAKE3's tree splits them), as `b3sum` does,
            // but read, not mapped: a file truncated under us is an error, not a SIGBUS.
            let mut buf = vec![0u8; DIGEST_READ];
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            loop {
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if filled == 0 {
                    break;
                }
                hasher.update_rayon(&buf[..filled]);
                size += filled as u64;
            }
            Ok((Digest(*hasher.finalize().as_bytes()), size))
        })
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
                match commit_file(file, &source, &dest, &address_owned, size, &root, false) {
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

    async fn health(&self) -> BackendHealth {
        let root = self.root.clone();
        let stat = tokio::task::spawn_blocking(move || {
            if !root.is_dir() {
                return Err(format!("root {} is missing", root.display()));
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
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| store.io_error("opening file to adopt", e))?;
    let mut staged = store.stage().await?;
    let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    while let Some(chunk) = chunks.next().await {
        staged
            .write(chunk.map_err(|e| store.io_error("reading file to adopt", e))?)
            .await?;
    }
    let outcome = staged.commit(address).await?;
    let _ = tokio::fs::remove_file(path).await;
    Ok(outcome)
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
                let info = BlobInfo {
                    address: ContentAddress::new(algorithm, digest),
                    size: entry.metadata()?.len(),
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
    file: Option<std::fs::File>,
    buffer: BytesMut,
    written: u64,
    /// Bytes handed to the file so far.
    flushed: u64,
    /// Start of the range whose writeback has not been started yet.
    writeback_from: u64,
    /// The file is durable ([`StagedBlob::prepare`] synced it).
    synced: bool,
}

impl LocalStaged {
    async fn flush_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = self.buffer.split().freeze();
        let mut file = self
            .file
            .take()
            .expect("file present until commit or abort");
        let end = self.flushed + data.len() as u64;
        let writeback =
            (end - self.writeback_from >= WRITEBACK_EVERY).then_some((self.writeback_from, end));
        let (file, result) = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&data);
            if r.is_ok()
                && let Some((from, to)) = writeback
            {
                start_writeback(&file, from, to);
            }
            (file, r)
        })
        .await
        .map_err(|e| Error::storage(&self.store.id, e))?;
        self.file = Some(file);
        result.map_err(|e| self.store.io_error("writing staging file", e))?;
        self.flushed = end;
        if writeback.is_some() {
            self.writeback_from = end;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl StagedBlob for LocalStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.buffer.is_empty() && chunk.len() >= WRITE_BATCH {
            self.buffer = BytesMut::from(chunk);
            return self.flush_buffer().await;
        }
        self.buffer.extend_from_slice(&chunk);
        if self.buffer.len() >= WRITE_BATCH {
            self.flush_buffer().await?;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn prepare(&mut self, address: &ContentAddress) -> Result<()> {
        let mut file = self
            .file
            .take()
            .expect("file present until commit or abort");
        let data = self.buffer.split().freeze();
        let dest = self.store.path_of(address);
        let size = self.written;
        // One trip to a blocking thread: the last buffered bytes, then the sync.
        let (file, result) = tokio::task::spawn_blocking(move || {
            if let Err(e) = file.write_all(&data) {
                return (file, Err(("writing staging file", e)));
            }
            // A small blob is synced at commit, after it is in place (see `publish_small`);
            // bytes already stored are not ours to sync: commit will drop this copy.
            if size <= SMALL_BLOB_MAX || std::fs::metadata(&dest).is_ok_and(|m| m.len() == size) {
                return (file, Ok(false));
            }
            let r = file.sync_all().map(|()| true);
            (file, r.map_err(|e| ("syncing staging file", e)))
        })
        .await
        .map_err(|e| Error::storage(&self.store.id, e))?;
        self.file = Some(file);
        self.flushed = self.written;
        self.synced = result.map_err(|(what, e)| self.store.io_error(what, e))?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, address: &ContentAddress) -> Result<CommitOutcome> {
        self.flush_buffer().await?;
        let file = self
            .file
            .take()
            .expect("file present until commit or abort");
        let staged = self.path.clone();
        let dest = self.store.path_of(address);
        let size = self.written;
        let root = self.store.root.clone();
        let synced = self.synced;
        let address = *address;
        let outcome = tokio::task::spawn_blocking(move || {
            if size <= SMALL_BLOB_MAX {
                drop(file);
                publish_small(&staged, &dest, &address, size, &root)
            } else {
                commit_file(file, &staged, &dest, &address, size, &root, synced)
            }
        })
        .await
        .map_err(|e| Error::storage(&self.store.id, e))?;
        outcome.map_err(|e| self.store.io_error("committing blob", e))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file.take();
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
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn commit_file(
    file: std::fs::File,
    staged: &Path,
    dest: &Path,
    address: &ContentAddress,
    size: u64,
    root: &Path,
    synced: bool,
) -> std::io::Result<CommitOutcome> {
    // A blob already there holding these bytes: drop ours. One that does not (truncated
    // behind our back, or a small publish cut short by a crash) is replaced, which heals it.
    if holds(dest, address, size) {
        drop(file);
        std::fs::remove_file(staged)?;
        return Ok(CommitOutcome::AlreadyPresent);
    }
    if !synced {
        file.sync_all()?;
    }
    drop(file);
    let created = create_parents(dest, root)?;
    std::fs::rename(staged, dest)?;
    // Make the rename durable, and every directory entry we created on the way.
    sync_parents(dest, &created)?;
    Ok(CommitOutcome::Stored)
}

/// Publishes a blob of at most [`SMALL_BLOB_MAX`] bytes with one journal commit instead of
/// two: the staged file is linked into place *before* it is synced, then the file and its
/// directories are synced together (the first sync commits all of it; the others find
/// nothing left). Concurrent publishes share commits too, so a batch of small ingests costs
/// about one. The price: a crash between the link and the sync can leave a file under the
/// address whose bytes never reached the disk. Nothing trusts such a file: no location row
/// names it (the registry records the location only after commit returns), and whoever finds
/// a small file at an address reads it back before using it ([`holds`]); an intact one is
/// kept (it may be a concurrent publish's, so it is synced before we return), a bad one is
/// replaced, by bytes synced before the rename. So a file once under an address is only ever
/// swapped for a durable copy, and a concurrent publish that finds our linked copy syncs it
/// itself before it returns.
fn publish_small(
    staged: &Path,
    dest: &Path,
    address: &ContentAddress,
    size: u64,
    root: &Path,
) -> std::io::Result<CommitOutcome> {
    let created = create_parents(dest, root)?;
    let outcome = match std::fs::hard_link(staged, dest) {
        Ok(()) => CommitOutcome::Stored,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if holds(dest, address, size) {
                CommitOutcome::AlreadyPresent
            } else {
                // Replacing a file (rare): sync ours first, so that whatever a concurrent
                // publish of the same bytes finds and relies on is never an unsynced copy.
                std::fs::File::open(staged)?.sync_all()?;
                std::fs::rename(staged, dest)?;
                CommitOutcome::Stored
            }
        }
        Err(e) => return Err(e),
    };
    match std::fs::remove_file(staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // renamed into place
        Err(e) => return Err(e),
    }
    std::fs::File::open(dest)?.sync_all()?;
    sync_parents(dest, &created)?;
    Ok(outcome)
}

/// Whether the file at `dest` holds the bytes of `address` (`size` of them). A small file is
/// read back and hashed (it may be a publish cut short by a crash, see [`publish_small`]);
/// a larger one only ever appears after its bytes were synced, so its size is proof enough.
fn holds(dest: &Path, address: &ContentAddress, size: u64) -> bool {
    let Ok(meta) = std::fs::metadata(dest) else {
        return false;
    };
    if meta.len() != size {
        return false;
    }
    if size > SMALL_BLOB_MAX {
        return true;
    }
    let Ok(bytes) = std::fs::read(dest) else {
        return false;
    };
    let digest = crate::identity::DualHasher::digest(&bytes);
    let observed = match address.algorithm() {
        Algorithm::Blake3 => digest.blake3,
        Algorithm::Sha256 => digest.sha256,
    };
    observed == *address.digest()
}

/// Creates `dest`'s missing parent directories below `root`; returns those it created.
fn create_parents(dest: &Path, root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let parent = dest.parent().expect("blob path has a parent");
    let mut created = Vec::new();
    let mut dir = parent;
    while !dir.exists() && dir != root {
        created.push(dir.to_path_buf());
        dir = dir.parent().expect("inside root");
    }
    std::fs::create_dir_all(parent)?;
    Ok(created)
}

/// Makes `dest`'s directory entry durable, and those of the directories in `created`.
fn sync_parents(dest: &Path, created: &[PathBuf]) -> std::io::Result<()> {
    fsync_dir(dest.parent().expect("blob path has a parent"))?;
    for dir in created {
        fsync_dir(dir.parent().expect("inside root"))?;
    }
    Ok(())
}

/// Asks the kernel to start writing `[from, to)` to disk now, without waiting for it. Purely a
/// performance hint: durability still comes from the fsync at commit.
pub(crate) fn start_writeback(file: &std::fs::File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; sync_file_range only reads
    // its arguments. Errors (e.g. a filesystem that does not support it) are ignored.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// What a whole-blob read is checked against.
struct Check {
    expected: Digest,
    size: u64,
    what: String,
}

/// The reading side of [`read_chunks`], moved to a blocking thread for each batch.
struct Reader {
    file: std::io::Take<std::fs::File>,
    check: Option<(Check, blake3::Hasher)>,
    seen: u64,
    at_end: bool,
    buf: BytesMut,
}

impl Reader {
    /// Reads up to [`READ_BATCH`] chunks straight into the buffers that are sent (one copy
    /// out of the page cache), hashing each while it is still in cache. At the end of the
    /// file it runs the check: a mismatch is an error.
    fn read_batch(&mut self) -> std::io::Result<Vec<Bytes>> {
        let mut chunks = Vec::with_capacity(READ_BATCH);
        while chunks.len() < READ_BATCH && !self.at_end {
            // Reuses the allocation of chunks the client has been sent already.
            self.buf.reserve(READ_CHUNK);
            while self.buf.len() < READ_CHUNK {
                match read_into_spare(&mut self.file, &mut self.buf, READ_CHUNK) {
                    Ok(0) => {
                        self.at_end = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let filled = self.buf.len();
            self.seen += filled as u64;
            if let Some((_, hasher)) = &mut self.check {
                hasher.update(&self.buf);
            }
            if filled > 0 {
                chunks.push(self.buf.split().freeze());
            }
        }
        if self.at_end
            && let Some((check, hasher)) = &self.check
        {
            let observed = Digest(*hasher.finalize().as_bytes());
            super::checked::check(check.expected, check.size, observed, self.seen, &check.what)?;
        }
        Ok(chunks)
    }
}

/// Reads from `file` into `buf`'s spare capacity, up to `limit` bytes in all, and returns how
/// many bytes came (0 at the end). Reading into the spare capacity directly spares zeroing
/// every buffer first (which cost 4% of a download's CPU).
fn read_into_spare(
    file: &mut std::io::Take<std::fs::File>,
    buf: &mut BytesMut,
    limit: usize,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let want = (limit - buf.len())
        .min(buf.capacity() - buf.len())
        .min(usize::try_from(file.limit()).unwrap_or(usize::MAX));
    if want == 0 {
        return Ok(0);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory of at least `want` bytes owned by `buf`; read(2)
    // writes at most `want` bytes into it and reports how many, and exactly those many are
    // then marked initialised.
    let n = unsafe { libc::read(file.get_ref().as_raw_fd(), spare.as_mut_ptr().cast(), want) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    file.set_limit(file.limit() - n as u64);
    Ok(n)
}

type Batch = tokio::task::JoinHandle<(Reader, std::io::Result<Vec<Bytes>>)>;

fn spawn_batch(mut reader: Reader) -> Batch {
    tokio::task::spawn_blocking(move || {
        let chunks = reader.read_batch();
        (reader, chunks)
    })
}

/// Streams up to `length` bytes of `file` from `offset`, read in batches on the blocking pool
/// (one hop per [`READ_BATCH`] chunks, the next batch read while this one is sent). No thread
/// waits for a slow client, and at most about two batches are buffered, so memory stays flat.
/// With a `check`, the last chunk read is held back until the next batch or the check at the
/// end has passed (see [`BlobStore::get_checked`]).
fn read_chunks(
    mut file: std::fs::File,
    offset: u64,
    length: u64,
    check: Option<Check>,
) -> ByteStream {
    use std::io::{Read, Seek};
    struct State {
        reading: Option<Batch>,
        ready: std::collections::VecDeque<Bytes>,
        held: Option<Bytes>,
        hold_back: bool,
    }
    let hold_back = check.is_some();
    let start = move || -> std::io::Result<Reader> {
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))?;
        }
        Ok(Reader {
            file: file.take(length),
            check: check.map(|c| (c, blake3::Hasher::new())),
            seen: 0,
            at_end: false,
            buf: BytesMut::new(),
        })
    };
    let first = tokio::task::spawn_blocking(move || match start() {
        Ok(mut reader) => {
            let chunks = reader.read_batch();
            (Some(reader), chunks)
        }
        Err(e) => (None, Err(e)),
    });
    let state = State {
        reading: None,
        ready: Default::default(),
        held: None,
        hold_back,
    };
    let stream =
        futures::stream::try_unfold((state, Some(first)), |(mut s, mut first)| async move {
            loop {
                if let Some(chunk) = s.ready.pop_front() {
                    return Ok(Some((chunk, (s, first))));
                }
                let (reader, chunks) = match (first.take(), s.reading.take()) {
                    (Some(first), _) => {
                        let (reader, chunks) = first.await.map_err(std::io::Error::other)?;
                        (reader, chunks)
                    }
                    (None, Some(batch)) => {
                        let (reader, chunks) = batch.await.map_err(std::io::Error::other)?;
                        (Some(reader), chunks)
                    }
                    (None, None) => return Ok(None),
                };
                let chunks = chunks?;
                let at_end = reader.as_ref().is_none_or(|r| r.at_end);
                s.ready.extend(s.held.take());
                s.ready.extend(chunks);
                if !at_end {
                    if s.hold_back {
                        s.held = s.ready.pop_back();
                    }
                    // Read the next batch while this one goes out.
                    s.reading = reader.map(spawn_batch);
                }
            }
        });
    stream.boxed()
}

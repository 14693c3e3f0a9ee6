//! Publishing a staged blob under its address: durable before it is visible, with one
//! journal commit for small blobs.

use super::{Algorithm, CommitOutcome, ContentAddress};
use std::path::{Path, PathBuf};

/// Blobs up to this size are published with one journal commit (see `publish_small`); the
/// same size as the registry's group commit, whose batches then share commits.
pub(super) const SMALL_BLOB_MAX: u64 = 1 << 20;
/// Writeback is started every this many bytes, so the final fsync finds little left to flush
/// and disk writes overlap hashing and the network.
pub(crate) const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// A file found under an address and hashed right (by [`verify_existing`], before any lock
/// was taken): its device and inode, so that commit can tell it is still the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verified {
    dev: u64,
    ino: u64,
}

/// What was done to a staged file before its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Prepared {
    /// Nothing: commit syncs it if it is to be published.
    #[default]
    Nothing,
    /// Synced: durable already.
    Synced,
    /// Not synced, because the address already holds these bytes (hashed).
    AlreadyThere(Verified),
}

/// Hashes a file already under `address` with `size` bytes, if there is one: `Some` when it
/// holds them. For doing that work before the blob's lock and the database transaction are
/// taken (see [`commit_file`]).
pub(super) fn verify_existing(
    dest: &Path,
    address: &ContentAddress,
    size: u64,
) -> Option<Verified> {
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(dest).ok()?;
    if before.len() != size || !holds(dest, address, size) {
        return None;
    }
    Some(Verified {
        dev: before.dev(),
        ino: before.ino(),
    })
}

pub(super) fn commit_file(
    file: std::fs::File,
    staged: &Path,
    dest: &Path,
    address: &ContentAddress,
    size: u64,
    root: &Path,
    prepared: Prepared,
) -> std::io::Result<CommitOutcome> {
    use std::os::unix::fs::MetadataExt;
    // A blob already there holding these bytes: drop ours. One that does not (truncated
    // behind our back, or a small publish cut short by a crash) is replaced, which heals it.
    // A file hashed right moments ago is trusted if it is still that file.
    let still_verified = match prepared {
        Prepared::AlreadyThere(v) => std::fs::metadata(dest)
            .is_ok_and(|m| m.dev() == v.dev && m.ino() == v.ino && m.len() == size),
        _ => false,
    };
    if still_verified || holds(dest, address, size) {
        drop(file);
        std::fs::remove_file(staged)?;
        return Ok(CommitOutcome::AlreadyPresent);
    }
    if prepared != Prepared::Synced {
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
pub(super) fn publish_small(
    file: std::fs::File,
    staged: &Path,
    dest: &Path,
    address: &ContentAddress,
    size: u64,
    root: &Path,
) -> std::io::Result<CommitOutcome> {
    let created = create_parents(dest, root)?;
    // The file now under the address, to sync: ours (linked or renamed), or the copy found.
    let (outcome, under_address) = match std::fs::hard_link(staged, dest) {
        Ok(()) => (CommitOutcome::Stored, file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if holds(dest, address, size) {
                (CommitOutcome::AlreadyPresent, std::fs::File::open(dest)?)
            } else {
                // Replacing a file (rare): sync ours first, so that whatever a concurrent
                // publish of the same bytes finds and relies on is never an unsynced copy.
                file.sync_all()?;
                std::fs::rename(staged, dest)?;
                (CommitOutcome::Stored, file)
            }
        }
        Err(e) => return Err(e),
    };
    match std::fs::remove_file(staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // renamed into place
        Err(e) => return Err(e),
    }
    under_address.sync_all()?;
    sync_parents(dest, &created)?;
    Ok(outcome)
}

/// Whether the file at `dest` holds the bytes of `address` (`size` of them), read back and
/// hashed: its size alone is never proof. A small file may be a publish cut short by a crash
/// (see [`publish_small`]), and any file may have been changed after it was published (by
/// something outside this server, or, before chunks were barred from spools being completed,
/// by an upload chunk writing into the adopted spool). This runs only when bytes just received
/// meet a file already at their address, so the bytes kept are always proven right: if these
/// are not, the fresh bytes replace them.
fn holds(dest: &Path, address: &ContentAddress, size: u64) -> bool {
    let Ok(file) = std::fs::File::open(dest) else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.len() == size) {
        return false;
    }
    match address.algorithm() {
        Algorithm::Blake3 => super::read::digest_file(file)
            .is_ok_and(|(digest, read)| read == size && digest == *address.digest()),
        Algorithm::Sha256 => crate::identity::DualHasher::digest_reader(file, |_| {})
            .is_ok_and(|found| found.size == size && found.sha256 == *address.digest()),
    }
}

/// Creates `dest`'s missing parent directories below `root`; returns those it created.
/// Fan-out directories are never removed, so one that exists is left alone: no `mkdir`
/// (which takes its parent's lock, contended by concurrent publishes) just to learn that.
fn create_parents(dest: &Path, root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let parent = dest.parent().expect("blob path has a parent");
    let mut created = Vec::new();
    let mut dir = parent;
    while !dir.exists() && dir != root {
        created.push(dir.to_path_buf());
        dir = dir.parent().expect("inside root");
    }
    if !created.is_empty() {
        std::fs::create_dir_all(parent)?;
    }
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

//! What this process holds of an upload session between its requests: the running digest of
//! the bytes received and, for a backend that would otherwise have to be sent the whole spooled
//! file at completion (S3), a staged write the bytes stream into as they arrive
//! ("write-through"). So a session's upload to such a backend overlaps its chunks instead of
//! following them, and completion only confirms the digest and commits.
//!
//! Both are lost on a restart, and a write-through is given up whenever it could disagree
//! with the spool (a backend error or stall, a chunk the spool did not keep, another process
//! taking over the session). The spool file stays the record of the session's bytes, so
//! completion can always fall back to adopting it: a write-through only ever saves time.

use crate::domain::Timestamp;
use crate::error::Result;
use crate::identity::{ContentAddress, DualHasher};
use crate::storage::{BlobStore, CommitOutcome, StagedBlob};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// A write into the backend that makes no progress for this long is given up (the session
/// carries on spooling): a stuck backend must not hold a chunk's request hostage.
const STALL: Duration = Duration::from_secs(30);

/// A write-through whose session has sent no chunk for this long may be given up when
/// another session needs its slot. S3 servers end a request whose body goes quiet well before
/// (Ceph RGW after about a minute, AWS sooner), so by then it is dead weight: without this, a
/// client that vanished between chunks would hold its slot until the session expires.
pub(super) const IDLE_SECONDS: i64 = 120;

/// The live state of the sessions this process is receiving, by session id.
pub(crate) type LiveUploads = Arc<Mutex<HashMap<Uuid, LiveUpload>>>;

/// A session's state in this process, valid while `received` equals its recorded offset.
pub(crate) struct LiveUpload {
    /// Bytes hashed (and, with a write-through, written through) so far.
    pub(super) received: u64,
    pub(super) hasher: DualHasher,
    pub(super) through: Option<WriteThrough>,
    /// When the session's last chunk ended.
    pub(super) touched: Timestamp,
}

/// Gives up the write-throughs of sessions idle since before `before` (their sessions keep
/// spooling and are stored from the spool at completion); returns how many.
pub(super) fn give_up_idle(live: &LiveUploads, before: Timestamp) -> usize {
    let idle: Vec<WriteThrough> = live
        .lock()
        .expect("live uploads")
        .values_mut()
        .filter(|l| l.touched < before)
        .filter_map(|l| l.through.take())
        .collect();
    // Dropped outside the lock (each is aborted in the background).
    idle.len()
}

/// How many sessions may write through at once, and what became of those that did.
#[derive(Debug)]
pub(crate) struct WriteThroughSlots {
    max: usize,
    slots: Arc<tokio::sync::Semaphore>,
    started: AtomicU64,
    committed: AtomicU64,
    given_up: AtomicU64,
}

/// Counts of upload sessions that wrote through to their backend, in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteThroughStats {
    /// Sessions whose bytes began streaming into their backend with their first chunk.
    pub started: u64,
    /// Sessions completed by committing that write (no second pass over the bytes).
    pub committed: u64,
    /// Write-throughs given up (backend error or stall, a chunk not kept, a lost session);
    /// those sessions' spooled files are stored at completion instead.
    pub given_up: u64,
}

impl WriteThroughSlots {
    pub(crate) fn new(max: usize) -> Self {
        WriteThroughSlots {
            max,
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            started: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
        }
    }

    /// Whether any session may write through at all.
    pub(crate) fn enabled(&self) -> bool {
        self.max > 0
    }

    pub(crate) fn stats(&self) -> WriteThroughStats {
        WriteThroughStats {
            started: self.started.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
        }
    }

    /// A staged write of `size` bytes into `backend` for a session, if the backend wants one
    /// and a slot is free (when none is, `free_idle` is asked to give up idle ones first);
    /// `None` means the session spools only (as it always may).
    pub(super) async fn start(
        self: &Arc<Self>,
        backend: Arc<dyn BlobStore>,
        size: u64,
        expected: Option<ContentAddress>,
        session: Uuid,
        free_idle: impl FnOnce() -> usize,
    ) -> Option<WriteThrough> {
        if !writes_through(backend.as_ref(), size) {
            return None;
        }
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if free_idle() > 0 => self.slots.clone().try_acquire_owned().ok()?,
            Err(_) => {
                tracing::debug!(upload = %session, "every write-through slot is taken; spooling only");
                return None;
            }
        };
        let hint = crate::storage::WriteHint {
            size: Some(size),
            expected,
        };
        match backend.stage_with(hint).await {
            Ok(staged) => {
                self.started.fetch_add(1, Ordering::Relaxed);
                Some(WriteThrough {
                    backend,
                    staged: Some(staged),
                    slots: self.clone(),
                    _slot: slot,
                })
            }
            Err(e) => {
                tracing::warn!(upload = %session, backend = backend.id(), error = %e,
                    "could not start writing through to the backend; spooling only");
                None
            }
        }
    }
}

/// A staged write in a backend that a session's bytes stream into as they arrive. Dropped
/// without [`commit`](Self::commit), it is aborted in the background and counted as given up.
pub(crate) struct WriteThrough {
    backend: Arc<dyn BlobStore>,
    staged: Option<Box<dyn StagedBlob>>,
    slots: Arc<WriteThroughSlots>,
    /// Held until the write commits or ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl WriteThrough {
    /// The backend written to.
    pub(super) fn backend(&self) -> &Arc<dyn BlobStore> {
        &self.backend
    }

    /// Bytes written through so far.
    pub(super) fn written(&self) -> u64 {
        self.staged.as_ref().map_or(0, |s| s.written())
    }

    /// Appends a chunk. An error (or a stall of [`STALL`]) says why the write-through must
    /// be given up; the caller then drops it.
    pub(super) async fn write(&mut self, chunk: Bytes) -> std::result::Result<(), String> {
        let Some(staged) = self.staged.as_mut() else {
            return Err("the staged write is gone".into());
        };
        match tokio::time::timeout(STALL, staged.write(chunk)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no progress in {} s", STALL.as_secs())),
        }
    }

    /// Makes the written bytes visible under `address` (the caller has checked they are).
    pub(super) async fn commit(mut self, address: &ContentAddress) -> Result<CommitOutcome> {
        let staged = self
            .staged
            .take()
            .expect("a write-through is committed once");
        let outcome = staged.commit(address).await;
        let counter = match outcome {
            Ok(_) => &self.slots.committed,
            Err(_) => &self.slots.given_up,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }
}

impl Drop for WriteThrough {
    fn drop(&mut self) {
        let Some(staged) = self.staged.take() else {
            return;
        };
        self.slots.given_up.fetch_add(1, Ordering::Relaxed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = staged.abort().await;
            });
        }
    }
}

/// Whether an upload session of `size` bytes, which arrives over many requests and is spooled
/// on this server's disk meanwhile, also streams into a staged write in `backend` as its bytes
/// arrive: when the backend is remote (storing the spooled file at completion would send every
/// byte again, taking as long as receiving it did) and the size is past what the backend
/// buffers in memory anyway. A backend on this server adopts the spool by moving it.
pub(super) fn writes_through(backend: &dyn BlobStore, size: u64) -> bool {
    let capabilities = backend.capabilities();
    size > 0 && capabilities.remote && size > capabilities.buffered_up_to
}

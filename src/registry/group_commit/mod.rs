//! Group commit for small ingests.
//!
//! An ingest of a few kilobytes costs PostgreSQL a dozen statements, a commit and a numbering
//! pass (see `events/sequencer.rs`). Under many concurrent small ingests that, not the bytes,
//! is the limit. So an ingest of at most [`GROUP_MAX_BYTES`] does not open its own transaction:
//! it hands its file to a committer, which records every file waiting at that moment in one
//! transaction, with the same set-based view statements replay uses. Under no load a batch is
//! one file and nothing waits; under load a batch is whatever arrived while the previous one
//! committed.
//!
//! The garbage-collection protocol (`gc.rs`) is kept: the committer takes the blobs' locks
//! shared in its transaction first, and only then tells each waiting ingest to make its bytes
//! appear under their address; it records the files once every one has answered. Each file is
//! checked as a lone ingest would be (package open and the tenant's, path free unless
//! replacing, room in the package), in batch order, so two files of one batch at one path
//! behave as two ingests one after the other. A file refused by its checks gets its own
//! error and the others go on. If the batch transaction itself fails, each of its files is
//! retried alone (after checking, under its lock, that its bytes are still there), so one
//! file's trouble never fails another's request.

mod admission;

use super::record::file_record;
use super::types::FileRecord;
use super::types::IngestRequest;
use crate::domain::TenantId;
use crate::error::{Error, Result};
use crate::events::{self, DomainEvent, FileIngested};
use crate::identity::{ContentAddress, Digest};
use crate::storage::Backends;
use deadpool_postgres::Pool;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, mpsc, oneshot};

/// One statement parameter.
type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// Ingests up to this size go through the committer; larger ones commit alone, as making
/// their bytes appear (an fsync of the whole file, or a server-side copy) would hold up the
/// batch, and their own commit is negligible next to their transfer.
pub const GROUP_MAX_BYTES: u64 = 1 << 20;

/// Most files in one batch.
const MAX_BATCH: usize = 256;

/// A file to record.
pub(super) struct BatchFile {
    pub tenant: TenantId,
    pub request: IngestRequest,
    /// The event to record; the committer fills in `replaced_file_id`.
    pub event: FileIngested,
    pub blake3: Digest,
    pub sha256: Digest,
    /// The registry's file limit per package.
    pub max_files: u64,
}

/// A file waiting for a batch.
pub(super) struct Queued {
    pub item: BatchFile,
    /// Told once the blob's lock is held: go and publish.
    pub go: oneshot::Sender<Result<LockHeld>>,
}

/// The committer holds the blob's lock: make the bytes appear, say so, wait for the file.
pub(super) struct LockHeld {
    /// A copy verification found damaged is on the backend: delete it first.
    pub damaged: bool,
    /// `Ok` once the bytes are under their address; `Err` if that failed (the ingest returns
    /// its own error).
    pub published: oneshot::Sender<std::result::Result<(), ()>>,
    /// The recorded file, or why not.
    pub done: oneshot::Receiver<Result<FileRecord>>,
}

/// The queue to the committers, started on first use (on the caller's runtime, and again if
/// that runtime has gone); they stop when the last registry clone is dropped.
#[derive(Clone, Default)]
pub(super) struct Committer {
    queue: Arc<std::sync::Mutex<Option<mpsc::UnboundedSender<Queued>>>>,
    stats: Arc<Stats>,
}

/// How many batches and files the committers recorded.
#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    files: AtomicU64,
}

impl Committer {
    /// Queues a file for the next batch.
    pub fn submit(
        &self,
        committers: usize,
        pool: &Pool,
        backends: &Backends,
        sequencer: &events::Sequencer,
        pending: Queued,
    ) -> Result<()> {
        let sender = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            match &*queue {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let (sender, receiver) = mpsc::unbounded_channel();
                    let receiver = Arc::new(Mutex::new(receiver));
                    // While one batch commits, the next takes its locks and has its bytes
                    // published (`Limits::group_committers`).
                    for _ in 0..committers.max(1) {
                        let worker = BatchCommitter {
                            pool: pool.clone(),
                            backends: backends.clone(),
                            sequencer: sequencer.clone(),
                            stats: self.stats.clone(),
                        };
                        tokio::spawn(worker.run(receiver.clone()));
                    }
                    *queue = Some(sender.clone());
                    sender
                }
            }
        };
        sender
            .send(pending)
            .map_err(|_| Error::Database("the ingest committer has stopped".into()))
    }

    /// (batches, files) recorded so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.batches.load(Ordering::Relaxed),
            self.stats.files.load(Ordering::Relaxed),
        )
    }
}

struct BatchCommitter {
    pool: Pool,
    backends: Backends,
    sequencer: events::Sequencer,
    stats: Arc<Stats>,
}

/// A file whose bytes are published, waiting for the batch to commit.
struct AwaitingCommit {
    item: BatchFile,
    done: oneshot::Sender<Result<FileRecord>>,
}

impl BatchCommitter {
    async fn run(self, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>) {
        loop {
            let batch = {
                let mut receiver = receiver.lock().await;
                let Some(first) = receiver.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                // Tenant by tenant (each tenant's files in arrival order): the batch's
                // statements then change the tenants' usage rows in tenant order, as every
                // other writer does, so two batches on connections sharing a usage slot
                // (`sql/V13__usage_slot_per_connection.sql`) cannot deadlock.
                batch.sort_by(|a, b| a.item.tenant.cmp(&b.item.tenant));
                batch
            };
            self.commit(batch).await;
        }
    }

    /// Records one batch; every file in it gets an answer.
    async fn commit(&self, batch: Vec<Queued>) {
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => return refuse_all(batch, &Error::from(e)),
        };
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => return refuse_all(batch, &Error::from(e)),
        };
        let damaged = match lock_and_find_damaged(&tx, &batch).await {
            Ok(d) => d,
            Err(e) => return refuse_all(batch, &e),
        };
        // Every blob's lock is held: let the ingests publish, then wait for all of them.
        let published = let_publish(batch, &damaged).await;
        if published.is_empty() {
            return;
        }
        let accepted = match self.admit_batch(&tx, published).await {
            Ok(a) => a,
            Err((e, items)) => {
                drop(tx);
                return self.record_each_alone(items, &e).await;
            }
        };
        if accepted.is_empty() {
            return;
        }
        match record_batch(tx, &accepted, &self.sequencer).await {
            Ok(()) => {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .files
                    .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                for item in accepted {
                    let record = file_record(&item.item.event, item.item.blake3, item.item.sha256);
                    let _ = item.done.send(Ok(record));
                }
            }
            Err(e) => {
                drop(client);
                self.record_each_alone(accepted, &e).await;
            }
        }
    }

    /// Checks each file as a lone ingest would, in batch order, holding the packages' row
    /// locks; answers the refused ones and returns the rest with `replaced_file_id` set.
    async fn admit_batch(
        &self,
        tx: &crate::db::Tx<'_>,
        items: Vec<AwaitingCommit>,
    ) -> std::result::Result<Vec<AwaitingCommit>, (Error, Vec<AwaitingCommit>)> {
        let mut admission = match admission::BatchAdmission::read(tx, &items).await {
            Ok(admission) => admission,
            Err(e) => return Err((e, items)),
        };
        let mut accepted = Vec::with_capacity(items.len());
        for mut item in items {
            match admission.admit(&mut item.item) {
                Err(e) => {
                    let _ = item.done.send(Err(e));
                }
                Ok(()) => accepted.push(item),
            }
        }
        Ok(accepted)
    }

    /// After the batch transaction failed: records each file in a transaction of its own.
    async fn record_each_alone(&self, items: Vec<AwaitingCommit>, cause: &Error) {
        if items.len() == 1 && matches!(cause, Error::Database(_)) {
            // Nothing to tell apart: the one file's own attempt failed.
            let item = items.into_iter().next().expect("one item");
            let _ = item.done.send(Err(copy_error(cause)));
            return;
        }
        tracing::warn!(files = items.len(), error = %cause, "a batch of ingests failed; recording its files one by one");
        for item in items {
            let result = self.record_one(&item.item).await;
            let _ = item.done.send(result);
        }
    }

    async fn record_one(&self, pending: &BatchFile) -> Result<FileRecord> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        super::blob_lock::lock_blob_shared(&tx, &pending.blake3).await?;
        // The batch's lock is gone: the bytes may have been collected since they appeared.
        let address = ContentAddress::blake3(pending.blake3);
        let backend = self
            .backends
            .get(&pending.event.backend_id)
            .ok_or_else(|| {
                Error::Integrity(format!("unknown backend {}", pending.event.backend_id))
            })?;
        if backend.head(&address).await?.is_none() {
            return Err(Error::storage(
                backend.id(),
                format!("{address} disappeared before its file was recorded; send it again"),
            ));
        }
        let mut event = pending.event.clone();
        event.replaced_file_id = super::admission::check_can_add(
            &tx,
            &pending.tenant,
            event.package_id,
            &pending.request,
            pending.max_files,
            true,
        )
        .await?
        .replaced;
        super::record::commit_file_event(
            tx,
            &pending.tenant,
            event,
            pending.blake3,
            pending.sha256,
            &self.sequencer,
        )
        .await
    }
}

/// Takes every blob's collection lock (shared) and finds which of their copies verification
/// found damaged, in one round trip.
async fn lock_and_find_damaged(
    tx: &crate::db::Tx<'_>,
    batch: &[Queued],
) -> Result<HashSet<([u8; 32], String)>> {
    let digests: Vec<Digest> = batch.iter().map(|p| p.item.blake3).collect();
    let blake3: Vec<&[u8]> = batch.iter().map(|p| p.item.blake3.0.as_slice()).collect();
    let damaged = tx
        .prepare_cached(
            "SELECT blake3, backend_id FROM storage_locations \
             WHERE blake3 = ANY($1) AND status = 'failed'",
        )
        .await?;
    // Sent together, run in order: the check reads behind the locks.
    super::blob_lock::prepare_blob_locks(tx).await?;
    let ((), rows) =
        futures::try_join!(super::blob_lock::lock_blobs_shared(tx, &digests), async {
            Ok(tx.query(&damaged, &[&blake3]).await?)
        })?;
    let mut found = HashSet::new();
    for row in rows {
        let digest: Vec<u8> = row.get(0);
        if let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) {
            found.insert((digest, row.get::<_, String>(1)));
        }
    }
    Ok(found)
}

/// Tells every file of a batch that could not start why.
fn refuse_all(batch: Vec<Queued>, cause: &Error) {
    tracing::warn!(files = batch.len(), error = %cause, "a batch of ingests could not start");
    for pending in batch {
        let _ = pending.go.send(Err(copy_error(cause)));
    }
}

/// The same error for another waiter (errors are not `Clone`: they may carry sources).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Database(m) => Error::Database(m.clone()),
        Error::Storage {
            backend,
            message,
            unavailable,
        } => Error::Storage {
            backend: backend.clone(),
            message: message.clone(),
            unavailable: *unavailable,
        },
        other => Error::Database(other.to_string()),
    }
}

/// Tells each queued ingest that its blob's lock is held, so that it publishes its bytes, and
/// waits for all of them: the files whose bytes are now under their address. An ingest whose
/// publish failed, or whose request ended, has answered its client and is left out.
async fn let_publish(
    batch: Vec<Queued>,
    damaged: &HashSet<([u8; 32], String)>,
) -> Vec<AwaitingCommit> {
    let mut waiting = Vec::with_capacity(batch.len());
    for pending in batch {
        let (published_tx, published_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let Queued { item, go } = pending;
        let key = (item.blake3.0, item.event.backend_id.clone());
        let answer = LockHeld {
            damaged: damaged.contains(&key),
            published: published_tx,
            done: done_rx,
        };
        // A failed send: the request ended (its client went away) before publishing.
        if go.send(Ok(answer)).is_ok() {
            waiting.push((
                published_rx,
                AwaitingCommit {
                    item,
                    done: done_tx,
                },
            ));
        }
    }
    let mut published = Vec::with_capacity(waiting.len());
    for (answer, item) in waiting {
        if let Ok(Ok(())) = answer.await {
            published.push(item);
        }
    }
    published
}

/// Records the admitted files of a batch (their events, then the quota check after them) and
/// commits. A tenant past its quota fails the batch: its files are then recorded one by one,
/// and only those past it are refused.
async fn record_batch(
    tx: crate::db::Tx<'_>,
    accepted: &[AwaitingCommit],
    sequencer: &events::Sequencer,
) -> Result<()> {
    let events: Vec<DomainEvent> = accepted
        .iter()
        .map(|item| DomainEvent::of(&item.item.tenant, item.item.event.clone()))
        .collect();
    let added: Vec<_> = accepted
        .iter()
        .map(|item| super::quota::Added {
            tenant: item.item.tenant.clone(),
            bytes: item.item.event.size,
            packages: 0,
            files: vec![(
                item.item.event.package_id.0,
                item.item.event.relative_path.as_str().to_owned(),
            )],
        })
        .collect();
    let now = accepted[0].item.event.ingested_at;
    let recorded = events::record(&tx, events).await?;
    super::quota::enforce(&tx, &added, now).await?;
    events::commit(tx, &recorded, sequencer).await?;
    Ok(())
}

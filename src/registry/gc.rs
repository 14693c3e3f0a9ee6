//! Garbage collection of blobs no file references, and of orphan bytes that never got a row.
//!
//! The race with dedup is closed by the per-blob lock protocol of [`super::blob_lock`].

use super::Registry;
use super::blob_lock;
use crate::domain::Timestamp;
use crate::error::{Error, Result};
use crate::events::{self, BlobCollected, DomainEvent};
use crate::identity::{ContentAddress, Digest};
use futures::{StreamExt, TryStreamExt};

/// A blob waiting for collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collectable {
    /// Its address.
    pub address: ContentAddress,
    /// Its size.
    pub size: u64,
    /// Since when no file references it.
    pub unreferenced_since: Timestamp,
}

/// What one collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Unreferenced blobs collected (one `v1.blob.collected` each).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Orphan objects (bytes with no row) deleted.
    pub orphans: u64,
    /// Whether the pass found as many collectable blobs as it could take (some it may have
    /// left to another collector holding them): there may be more.
    pub full: bool,
}

/// More orphans than this (and over a tenth of a backend's objects) in one sweep are taken for
/// a database that is not the backend's, not for crashes: see [`Registry::collect_orphans`].
pub const ORPHANS_BEYOND_BELIEF: usize = 100;

const CANDIDATES: &str = "SELECT b.blake3, b.size, b.unreferenced_since FROM blobs b \
     WHERE b.unreferenced_since <= $1 \
       AND NOT EXISTS (SELECT 1 FROM files f WHERE f.blake3 = b.blake3) \
     ORDER BY b.unreferenced_since LIMIT $2";

impl Registry {
    fn collect_cutoff(&self, grace_seconds: i64) -> Result<time::OffsetDateTime> {
        Ok(self
            .clock
            .now()
            .plus_seconds(-grace_seconds)
            .ok_or_else(|| Error::InvalidInput("garbage collection grace overflows".into()))?
            .as_datetime())
    }

    /// Blobs unreferenced for longer than the grace, without changing anything.
    pub async fn collectable_blobs(
        &self,
        grace_seconds: i64,
        limit: i64,
    ) -> Result<Vec<Collectable>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(CANDIDATES, &[&self.collect_cutoff(grace_seconds)?, &limit])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Collectable {
                    address: ContentAddress::blake3(
                        Digest::from_slice(r.get(0))
                            .map_err(|e| Error::Integrity(e.to_string()))?,
                    ),
                    size: r.get::<_, i64>(1) as u64,
                    unreferenced_since: Timestamp::from_datetime(r.get(2)),
                })
            })
            .collect()
    }

    /// When the next unreferenced blob's grace ends (`None`: none is waiting).
    pub async fn next_collection(&self, grace_seconds: i64) -> Result<Option<Timestamp>> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT min(unreferenced_since) FROM blobs WHERE unreferenced_since IS NOT NULL",
                &[],
            )
            .await?;
        Ok(row
            .get::<_, Option<time::OffsetDateTime>>(0)
            .map(Timestamp::from_datetime)
            .and_then(|t| t.plus_seconds(grace_seconds)))
    }

    /// Collects up to `limit` blobs unreferenced for longer than the grace, in one transaction:
    /// deletes their bytes from every backend holding a copy, then records `v1.blob.collected`.
    /// Concurrent workers share the work through the per-blob locks, tried and never waited
    /// for: a blob another collector or an ingest holds is skipped this round (see
    /// [`super::blob_lock`]).
    pub async fn collect_garbage(&self, grace_seconds: i64, limit: i64) -> Result<Collected> {
        let cutoff = self.collect_cutoff(grace_seconds)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (candidates, rows) = collectable_now(&tx, cutoff, limit).await?;
        let mut done = Collected {
            full: candidates == limit.unsigned_abs(),
            ..Collected::default()
        };
        let mut found = Vec::new();
        let mut deletions = Vec::new();
        for row in &rows {
            let backends: Vec<String> = row.get(3);
            let digest =
                Digest::from_slice(row.get(0)).map_err(|e| Error::Integrity(e.to_string()))?;
            let address = ContentAddress::blake3(digest);
            let Some(stores) = backends
                .iter()
                .map(|id| self.backends.get(id).cloned())
                .collect::<Option<Vec<_>>>()
            else {
                tracing::warn!(blob = %address, ?backends, "a copy is on a backend not configured here; not collected");
                continue;
            };
            let (size, since): (i64, time::OffsetDateTime) = (row.get(1), row.get(2));
            done.blobs += 1;
            done.bytes += size as u64;
            found.push(DomainEvent::new(BlobCollected {
                blake3: digest.to_hex(),
                size: size as u64,
                backends,
                unreferenced_since: Timestamp::from_datetime(since),
                collected_at: self.clock.now(),
            }));
            for store in stores {
                deletions.push(async move { store.delete(&address).await });
            }
        }
        // Deletions are independent: several at once. They run while the events and views
        // are written: both before COMMIT, as if one after the other (a crash or failure
        // before COMMIT leaves the rows, collected again next round; bytes already gone
        // delete as done).
        let deleting = async {
            futures::stream::iter(deletions)
                .buffer_unordered(16)
                .try_for_each(|()| async { Ok(()) })
                .await
        };
        let recording = async {
            if found.is_empty() {
                Ok(Vec::new())
            } else {
                events::record(&tx, found).await
            }
        };
        let ((), recorded) = futures::try_join!(deleting, recording)?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(done)
    }

    /// Deletes bytes stored under an address that no blob row names and no ingest is about to
    /// record (a crash between writing the bytes and committing their row). Returns how many.
    ///
    /// Refuses, deleting nothing, when a backend's orphans are more than
    /// [`ORPHANS_BEYOND_BELIEF`] and a tenth of what it holds: crashes leave a few, while a
    /// database that knows nothing of the backend (a wrong `ARTIFACTSTORE_DATABASE_URL`, a
    /// restore of the wrong backup, a private cluster made afresh) would otherwise empty it.
    pub async fn collect_orphans(&self) -> Result<u64> {
        let mut removed = 0;
        for backend in self.backends.all() {
            let listed: Vec<_> = backend.list().try_collect().await?;
            let mut orphans = Vec::new();
            for chunk in listed.chunks(500) {
                let digests: Vec<Vec<u8>> = chunk
                    .iter()
                    .filter(|b| b.address.algorithm() == crate::identity::Algorithm::Blake3)
                    .map(|b| b.address.digest().0.to_vec())
                    .collect();
                let client = self.pool.get().await?;
                let known: std::collections::HashSet<Vec<u8>> = client
                    .query(
                        "SELECT l.blake3 FROM storage_locations l \
                         WHERE l.blake3 = ANY($1) AND l.backend_id = $2 AND l.status <> 'deleted'",
                        &[&digests, &backend.id()],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                orphans.extend(digests.into_iter().filter(|d| !known.contains(d)));
            }
            if orphans.len() > ORPHANS_BEYOND_BELIEF && orphans.len() * 10 > listed.len() {
                return Err(Error::Integrity(format!(
                    "backend `{}` holds {} objects of which the database knows none of {}: \
                     refusing to delete them as orphans. Is this the database these bytes \
                     belong to (ARTIFACTSTORE_DATABASE_URL, the data directory)?",
                    backend.id(),
                    listed.len(),
                    orphans.len()
                )));
            }
            for chunk in orphans.chunks(500) {
                let mut client = self.pool.get().await?;
                let tx = client.transaction().await?;
                for digest in chunk {
                    let digest =
                        Digest::from_slice(digest).map_err(|e| Error::Integrity(e.to_string()))?;
                    // An ingest in flight holds the lock: its bytes are not orphans. Once we
                    // hold it, no ingest is between writing and recording: look again.
                    if blob_lock::try_lock_exclusive(&tx, &digest).await?
                        && tx
                            .query_opt(
                                "SELECT 1 FROM storage_locations WHERE blake3 = $1 \
                                 AND backend_id = $2 AND status <> 'deleted'",
                                &[&digest.0.as_slice(), &backend.id()],
                            )
                            .await?
                            .is_none()
                    {
                        backend.delete(&ContentAddress::blake3(digest)).await?;
                        tracing::info!(blob = %ContentAddress::blake3(digest), backend = backend.id(), "deleted orphan bytes");
                        removed += 1;
                    }
                }
                tx.commit().await?;
            }
        }
        Ok(removed)
    }
}

/// Up to `limit` blobs unreferenced since before `cutoff`, each locked for collection, with
/// the backends holding their copies: blake3, size, unreferenced since, backend ids; and how
/// many were candidates (those another collector holds are left to it).
async fn collectable_now(
    tx: &crate::db::Tx<'_>,
    cutoff: time::OffsetDateTime,
    limit: i64,
) -> Result<(u64, Vec<tokio_postgres::Row>)> {
    // No row locks here: an expiry may be holding these rows, and waiting for it while
    // holding them would deadlock. The per-blob advisory
    // lock (tried, never waited for) decides who may touch a blob.
    let candidates: Vec<Vec<u8>> = tx
        .query(CANDIDATES, &[&cutoff, &limit])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let found = candidates.len() as u64;
    let locked = blob_lock::try_lock_many_exclusive(tx, &candidates).await?;
    // Holding the locks, no ingest or link can be adding a file for these blobs: look
    // again (one may have committed just before, or another collector may have taken the
    // blob already), and find where the copies are.
    let rows = tx
        .query(
            "SELECT b.blake3, b.size, b.unreferenced_since, \
                    coalesce(array_agg(l.backend_id ORDER BY l.backend_id) \
                             FILTER (WHERE l.backend_id IS NOT NULL), '{}') \
             FROM blobs b \
             LEFT JOIN storage_locations l ON l.blake3 = b.blake3 AND l.status <> 'deleted' \
             WHERE b.blake3 = ANY($1) AND b.unreferenced_since IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM files f WHERE f.blake3 = b.blake3) \
             GROUP BY b.blake3, b.size, b.unreferenced_since",
            &[&locked],
        )
        .await?;
    Ok((found, rows))
}

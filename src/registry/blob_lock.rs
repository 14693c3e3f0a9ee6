//! The per-blob lock that closes the race between garbage collection and everything that
//! makes a file name existing bytes (ingest, group commit, dedup links, migration).
//!
//! It is a PostgreSQL transaction-level advisory lock keyed by the digest. Every ingest takes it *shared* before its bytes appear under their
//! address (or are found already there) and holds it until the transaction that records the
//! file commits. The collector takes it *exclusively*, without waiting, in the transaction that
//! deletes the bytes and records `v1.blob.collected`; a blob whose lock is taken is skipped this
//! round. So either the collector deletes first and the ingest then writes the bytes afresh
//! (its storage commit finds nothing there), or the ingest's file commits first and the blob is
//! referenced again (the collector's re-check, made holding the lock, skips it). Links take the
//! same shared lock before they look the blob up. The collector never waits for a lock while
//! holding one (it only tries), and takes no row locks before its blob locks, so it cannot
//! deadlock with expiries or ingests.

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::identity::Digest;

/// Namespace of the per-blob advisory locks (the two-int form, apart from bigint keys).
const BLOB_LOCKS: i32 = 0x6172_7462; // "artb"

fn lock_key(digest: &Digest) -> i32 {
    i32::from_be_bytes([digest.0[0], digest.0[1], digest.0[2], digest.0[3]])
}

const LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1, $2)";
const LOCK_MANY_SHARED: &str =
    "SELECT pg_advisory_xact_lock_shared($1, k) FROM unnest($2::int4[]) AS k";

/// Prepares the shared-lock statements on the transaction's connection (once per connection).
/// A caller that sends a lock together with statements of its own, to run after it, calls this
/// first: an execute waiting for its statement to be prepared would be sent after the others.
pub(super) async fn prepare_blob_locks(tx: &Tx<'_>) -> Result<()> {
    futures::try_join!(
        tx.prepare_cached(LOCK_SHARED),
        tx.prepare_cached(LOCK_MANY_SHARED)
    )?;
    Ok(())
}

/// Takes the blob's lock shared until the transaction ends (waits while a collector holds it).
pub(super) async fn lock_blob_shared(tx: &Tx<'_>, digest: &Digest) -> Result<()> {
    let statement = tx.prepare_cached(LOCK_SHARED).await?;
    tx.execute(&statement, &[&BLOB_LOCKS, &lock_key(digest)])
        .await?;
    Ok(())
}

/// [`lock_blob_shared`] for many blobs, in one statement.
pub(super) async fn lock_blobs_shared(tx: &Tx<'_>, digests: &[Digest]) -> Result<()> {
    if digests.is_empty() {
        return Ok(());
    }
    let keys: Vec<i32> = digests.iter().map(lock_key).collect();
    let statement = tx.prepare_cached(LOCK_MANY_SHARED).await?;
    tx.execute(&statement, &[&BLOB_LOCKS, &keys]).await?;
    Ok(())
}

/// Takes the blob's lock exclusively until the transaction ends, if nobody holds it; never
/// waits (the collector must not wait for a lock while holding others).
pub(super) async fn try_lock_exclusive(tx: &Tx<'_>, digest: &Digest) -> Result<bool> {
    Ok(tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1, $2)",
            &[&BLOB_LOCKS, &lock_key(digest)],
        )
        .await?
        .get(0))
}

/// [`try_lock_exclusive`] for many blobs (bare BLAKE3 bytes), in one statement: the ones now
/// locked.
pub(super) async fn try_lock_many_exclusive(
    tx: &Tx<'_>,
    blobs: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>> {
    let keys = blobs
        .iter()
        .map(|b| {
            Ok(lock_key(
                &Digest::from_slice(b).map_err(|e| Error::Integrity(e.to_string()))?,
            ))
        })
        .collect::<Result<Vec<i32>>>()?;
    Ok(tx
        .query(
            "SELECT c.blake3 FROM unnest($1::bytea[], $3::int4[]) AS c(blake3, k) \
             WHERE pg_try_advisory_xact_lock($2, c.k)",
            &[&blobs, &BLOB_LOCKS, &keys],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

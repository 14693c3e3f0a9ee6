//! The blob rows a writer's events will change, locked before any view changes (live writes
//! only: a replay holds every view table already).
//!
//! Without the one global lock writers once held, two kinds of conflict between concurrent
//! writers touch blob rows:
//! - a writer asking whether a blob is still referenced (a replaced file, an expiry) must not
//!   answer from before another writer's uncommitted file naming it: the answer would differ
//!   from a replay's, which applies the two one after the other. Taking the blob `FOR UPDATE`
//!   first waits for every writer holding it `KEY SHARE` (the file's foreign key), and the
//!   question, asked in a later statement, then sees that file;
//! - writers taking the same blob rows in different orders would deadlock.
//!
//! So every blob row a writer's view changes will take is taken here first, in digest order,
//! in one statement (`lock_blobs`, `sql/V10__event_sequencer.sql`).

use super::Tx;
use super::hex_bytes;
use crate::error::Result;
use crate::events::{Payload, StoredEvent};

/// Locks the blob rows `events` will take (see the module docs).
pub(crate) async fn lock_touched_blobs(tx: &Tx<'_>, events: &[StoredEvent]) -> Result<()> {
    let mut adding = Vec::new();
    let mut releasing = Vec::new();
    let mut releasing_files = Vec::new();
    let mut releasing_packages = Vec::new();
    for event in events {
        match Payload::decode(&event.event_type, &event.payload) {
            Ok(Some(Payload::FileIngested(f))) => {
                adding.push(hex_bytes(&f.blake3)?);
                releasing_files.extend(f.replaced_file_id.map(|id| id.0));
            }
            Ok(Some(Payload::LocationAdded(a))) => adding.push(hex_bytes(&a.blake3)?),
            Ok(Some(Payload::BlobCollected(c))) => releasing.push(hex_bytes(&c.blake3)?),
            Ok(Some(Payload::PackageExpired(e))) => releasing_packages.push(e.package_id.0),
            Ok(Some(Payload::PackageAbandoned(a))) => releasing_packages.push(a.package_id.0),
            Ok(Some(Payload::PackageWithdrawn(w))) => releasing_packages.push(w.package_id.0),
            Ok(Some(Payload::FileRemoved(r))) => releasing_files.push(r.file_id.0),
            // Others take no blob row; an event that does not decode is refused when applied.
            _ => {}
        }
    }
    if adding.is_empty()
        && releasing.is_empty()
        && releasing_files.is_empty()
        && releasing_packages.is_empty()
    {
        return Ok(());
    }
    let statement = tx
        .prepare_cached("SELECT lock_blobs($1::bytea[], $2::bytea[], $3::uuid[], $4::uuid[])")
        .await?;
    tx.execute(
        &statement,
        &[&adding, &releasing, &releasing_files, &releasing_packages],
    )
    .await?;
    Ok(())
}

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

/// The blob rows a list of events will take (see the module docs), to be locked before any
/// view changes.
pub(crate) struct TouchedBlobs {
    adding: Vec<Vec<u8>>,
    releasing: Vec<Vec<u8>>,
    releasing_files: Vec<uuid::Uuid>,
    releasing_packages: Vec<uuid::Uuid>,
}

impl TouchedBlobs {
    pub(crate) fn of(events: &[StoredEvent]) -> Result<Self> {
        let mut touched = TouchedBlobs {
            adding: Vec::new(),
            releasing: Vec::new(),
            releasing_files: Vec::new(),
            releasing_packages: Vec::new(),
        };
        for event in events {
            match Payload::decode(&event.event_type, &event.payload) {
                Ok(Some(Payload::FileIngested(f))) => {
                    touched.adding.push(hex_bytes(&f.blake3)?);
                    touched
                        .releasing_files
                        .extend(f.replaced_file_id.map(|id| id.0));
                }
                Ok(Some(Payload::LocationAdded(a))) => touched.adding.push(hex_bytes(&a.blake3)?),
                Ok(Some(Payload::BlobCollected(c))) => {
                    touched.releasing.push(hex_bytes(&c.blake3)?);
                }
                Ok(Some(Payload::PackageExpired(e))) => {
                    touched.releasing_packages.push(e.package_id.0);
                }
                Ok(Some(Payload::PackageAbandoned(a))) => {
                    touched.releasing_packages.push(a.package_id.0);
                }
                Ok(Some(Payload::PackageWithdrawn(w))) => {
                    touched.releasing_packages.push(w.package_id.0);
                }
                Ok(Some(Payload::FileRemoved(r))) => touched.releasing_files.push(r.file_id.0),
                // Others take no blob row; an event that does not decode is refused when
                // applied.
                _ => {}
            }
        }
        Ok(touched)
    }

    fn none(&self) -> bool {
        self.adding.is_empty()
            && self.releasing.is_empty()
            && self.releasing_files.is_empty()
            && self.releasing_packages.is_empty()
    }

    /// The locking statement, prepared (once per connection): `None` when nothing is taken.
    pub(crate) async fn prepare(&self, tx: &Tx<'_>) -> Result<Option<tokio_postgres::Statement>> {
        if self.none() {
            return Ok(None);
        }
        Ok(Some(
            tx.prepare_cached(
                "SELECT lock_blobs($1::bytea[], $2::bytea[], $3::uuid[], $4::uuid[])",
            )
            .await?,
        ))
    }

    /// Takes the locks with `statement` ([`prepare`](Self::prepare)d): sent when first
    /// polled, so it can share a round trip with statements sent beside it.
    pub(crate) async fn lock(
        &self,
        tx: &Tx<'_>,
        statement: Option<&tokio_postgres::Statement>,
    ) -> Result<()> {
        if let Some(statement) = statement {
            tx.execute(
                statement,
                &[
                    &self.adding,
                    &self.releasing,
                    &self.releasing_files,
                    &self.releasing_packages,
                ],
            )
            .await?;
        }
        Ok(())
    }
}

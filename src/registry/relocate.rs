//! Moving stored copies between backends.
//!
//! Per blob: copy from the source to the target (hashing as it streams), re-read the target
//! copy and check its digest, then record `v1.storage.location_added` (target) and
//! `v1.storage.location_removed` (source) in one transaction, and only then delete the source
//! bytes. Every step is idempotent, so an interrupted migration is resumed by running it again:
//! blobs already on the target are not copied twice.

use super::Registry;
use crate::domain::PackageId;
use crate::error::{Error, Result};
use crate::events::{
    self, DomainEvent, LocationAdded, LocationRemoved, LocationStatus, LocationVerified,
};
use crate::identity::{ContentAddress, Digest};
use crate::storage::BlobStore;
use futures::StreamExt;

/// Which blobs to move.
#[derive(Debug, Clone)]
pub struct MigrateScope {
    /// Source backend id.
    pub from: String,
    /// Target backend id.
    pub to: String,
    /// Only the bytes of this package's files.
    pub package: Option<PackageId>,
    /// Only the bytes of packages of this retention class.
    pub retention_class: Option<String>,
}

/// One blob to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationItem {
    /// Its BLAKE3 digest.
    pub blake3: Digest,
    /// Its size.
    pub size: u64,
}

/// What moving a blob did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Copied, verified, recorded, source removed.
    Copied,
    /// The target already had a verified copy: only the source was removed.
    AlreadyThere,
    /// The source copy does not match its digest: it was recorded as failed and left alone.
    SourceDamaged,
    /// Garbage collection removed the blob before its move began: nothing to move.
    Collected,
}

impl Registry {
    /// The next blobs in scope still present on the source, after `after`, with how many
    /// remain in all (for progress).
    pub async fn migration_page(
        &self,
        scope: &MigrateScope,
        after: Option<&Digest>,
        limit: i64,
    ) -> Result<Vec<MigrationItem>> {
        self.check_backends(scope)?;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT l.blake3, b.size FROM storage_locations l \
                 JOIN blobs b ON b.blake3 = l.blake3 \
                 WHERE l.backend_id = $1 AND l.status = 'present' \
                   AND ($2::bytea IS NULL OR l.blake3 > $2) \
                   AND (($3::uuid IS NULL AND $4::text IS NULL) OR EXISTS ( \
                        SELECT 1 FROM files f JOIN packages p ON p.id = f.package_id \
                        WHERE f.blake3 = l.blake3 \
                          AND ($3::uuid IS NULL OR p.id = $3) \
                          AND ($4::text IS NULL OR p.retention_class = $4))) \
                 ORDER BY l.blake3 LIMIT $5",
                &[
                    &scope.from,
                    &after.map(|d| d.0.to_vec()),
                    &scope.package.map(|p| p.0),
                    &scope.retention_class,
                    &limit,
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(MigrationItem {
                    blake3: Digest::from_slice(r.get(0))
                        .map_err(|e| Error::Integrity(e.to_string()))?,
                    size: r.get::<_, i64>(1) as u64,
                })
            })
            .collect()
    }

    /// How many blobs and bytes in scope are still on the source. An unknown package (any
    /// tenant's) or retention class is `NotFound` / invalid, not an empty scope.
    pub async fn migration_bytes(&self, scope: &MigrateScope) -> Result<(u64, u64)> {
        self.check_backends(scope)?;
        let client = self.pool.get().await?;
        if let Some(package) = scope.package
            && client
                .query_opt("SELECT 1 FROM packages WHERE id = $1", &[&package.0])
                .await?
                .is_none()
        {
            return Err(Error::not_found("package", package));
        }
        if let Some(class) = &scope.retention_class
            && client
                .query_opt("SELECT 1 FROM retention_classes WHERE name = $1", &[class])
                .await?
                .is_none()
        {
            return Err(Error::InvalidInput(format!(
                "retention class `{}` does not exist",
                class.escape_debug()
            )));
        }
        drop(client);
        let mut after = None;
        let (mut count, mut bytes) = (0u64, 0u64);
        loop {
            let page = self.migration_page(scope, after.as_ref(), 10_000).await?;
            let Some(last) = page.last() else {
                return Ok((count, bytes));
            };
            after = Some(last.blake3);
            count += page.len() as u64;
            bytes += page.iter().map(|i| i.size).sum::<u64>();
        }
    }

    fn check_backends(&self, scope: &MigrateScope) -> Result<()> {
        for id in [&scope.from, &scope.to] {
            if self.backends.get(id).is_none() {
                return Err(Error::InvalidInput(format!(
                    "storage backend `{id}` is not configured"
                )));
            }
        }
        if scope.from == scope.to {
            return Err(Error::InvalidInput(
                "source and target backend are the same".into(),
            ));
        }
        Ok(())
    }

    /// Moves one blob from `scope.from` to `scope.to`.
    pub async fn migrate_blob(&self, scope: &MigrateScope, item: &MigrationItem) -> Result<Moved> {
        self.check_backends(scope)?;
        let source = self.backends.get(&scope.from).expect("checked").clone();
        let target = self.backends.get(&scope.to).expect("checked").clone();
        let address = ContentAddress::blake3(item.blake3);
        // The blob's collection lock, shared, from before the copy until the locations are
        // recorded (as an ingest does, see gc.rs): a collector skips the blob meanwhile rather
        // than delete bytes whose move is being recorded.
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        super::blob_lock::lock_blob_shared(&tx, &item.blake3).await?;
        let still_present = tx
            .query_opt(
                "SELECT 1 FROM storage_locations \
                 WHERE blake3 = $1 AND backend_id = $2 AND status = 'present'",
                &[&item.blake3.0.as_slice(), &scope.from],
            )
            .await?
            .is_some();
        if !still_present {
            return Ok(Moved::Collected);
        }
        let target_ok = match target.head(&address).await? {
            Some(size) if size == item.size => {
                let (digest, size) = read_digest(target.as_ref(), &address).await?;
                digest == item.blake3 && size == item.size
            }
            _ => false,
        };
        let moved = if target_ok {
            Moved::AlreadyThere
        } else {
            match copy_checked(source.as_ref(), target.as_ref(), item).await? {
                Copy::Done => Moved::Copied,
                Copy::SourceMissing => {
                    self.record_source_problem(tx, scope, item, LocationStatus::Missing, None)
                        .await?;
                    return Ok(Moved::SourceDamaged);
                }
                Copy::SourceDamaged(observed) => {
                    self.record_source_problem(
                        tx,
                        scope,
                        item,
                        LocationStatus::Failed,
                        Some(observed),
                    )
                    .await?;
                    return Ok(Moved::SourceDamaged);
                }
            }
        };
        let now = self.clock.now();
        let recorded = events::record(
            &tx,
            vec![
                DomainEvent::new(LocationAdded {
                    blake3: item.blake3.to_hex(),
                    backend_id: scope.to.clone(),
                    storage_key: address.storage_key(),
                    added_at: now,
                }),
                DomainEvent::new(LocationRemoved {
                    blake3: item.blake3.to_hex(),
                    backend_id: scope.from.clone(),
                    removed_at: now,
                }),
            ],
        )
        .await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        drop(client);
        // Readers now go to the target; a crash before this delete leaves orphan bytes on the
        // source for garbage collection, never a reference to missing bytes.
        source.delete(&address).await?;
        Ok(moved)
    }

    async fn record_source_problem(
        &self,
        tx: crate::db::Tx<'_>,
        scope: &MigrateScope,
        item: &MigrationItem,
        status: LocationStatus,
        observed: Option<(Digest, u64)>,
    ) -> Result<()> {
        tracing::error!(
            blob = %ContentAddress::blake3(item.blake3),
            backend = %scope.from,
            status = status.as_str(),
            "source copy is damaged; not migrated"
        );
        let recorded = events::record(
            &tx,
            vec![DomainEvent::new(LocationVerified {
                blake3: item.blake3.to_hex(),
                backend_id: scope.from.clone(),
                ok: false,
                status,
                observed_blake3: observed.map(|(d, _)| d.to_hex()),
                observed_size: observed.map(|(_, s)| s),
                verified_at: self.clock.now(),
            })],
        )
        .await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(())
    }
}

async fn read_digest(
    backend: &dyn crate::storage::BlobStore,
    address: &ContentAddress,
) -> Result<(Digest, u64)> {
    backend.read_digest(address).await
}

/// How copying a blob to the target went.
enum Copy {
    /// Stored on the target and read back intact.
    Done,
    /// The source does not have the bytes.
    SourceMissing,
    /// The source's bytes hash to this digest and size, not the blob's: nothing was stored.
    SourceDamaged((Digest, u64)),
}

/// Copies `item` from `source` to `target`, hashing the bytes as they pass; commits only bytes
/// that are the blob, then reads the target's copy back and checks it.
async fn copy_checked(
    source: &dyn BlobStore,
    target: &dyn BlobStore,
    item: &MigrationItem,
) -> Result<Copy> {
    let address = ContentAddress::blake3(item.blake3);
    let mut stream = match source.get(&address, None).await {
        Ok(s) => s,
        Err(Error::NotFound { .. }) => return Ok(Copy::SourceMissing),
        Err(e) => return Err(e),
    };
    let mut staged = target.stage().await?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = staged.abort().await;
                return Err(Error::storage(
                    source.id(),
                    format!("reading {address}: {e}"),
                ));
            }
        };
        hasher.update(&chunk);
        size += chunk.len() as u64;
        staged.write(chunk).await?;
    }
    let digest = Digest(*hasher.finalize().as_bytes());
    if digest != item.blake3 || size != item.size {
        staged.abort().await?;
        return Ok(Copy::SourceDamaged((digest, size)));
    }
    staged.commit(&address).await?;
    let (written, written_size) = read_digest(target, &address).await?;
    if written != item.blake3 || written_size != item.size {
        return Err(Error::storage(
            target.id(),
            format!(
                "the copy of {address} read back as {written_size} bytes hashing to {}",
                written.to_hex()
            ),
        ));
    }
    Ok(Copy::Done)
}

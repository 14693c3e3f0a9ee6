//! The views of packages and their files: `packages`, `files`, `blobs`, `storage_locations`
//! as ingests add to them, `manifests`.

use super::retention::mark_unreferenced;
use super::{Param, Then, exec, exec_in_order, exec_in_order_then, hex_bytes};
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::events::log::StoredEvent;
use crate::events::payloads::{FileIngested, PackageCreated};
use crate::manifest::Manifest;

pub(super) async fn created(tx: &Tx<'_>, event: &StoredEvent, p: &PackageCreated) -> Result<()> {
    let (id, tenant) = (&p.package_id.0, p.tenant.as_str());
    let metadata = p.metadata.to_json();
    let created_at = p.created_at.as_datetime();
    let package: [Param; 8] = [
        id,
        &tenant,
        &p.producer,
        &p.subject,
        &p.retention_class,
        &metadata,
        &created_at,
        &event.position,
    ];
    let retention: [Param; 2] = [id, &tenant];
    // Both statements in one round trip, run in this order.
    exec_in_order(
        tx,
        &[
            (
                "INSERT INTO packages (id, tenant, producer, subject, retention_class, metadata, \
                                       status, created_at, created_position) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8)",
                &package,
            ),
            (
                "INSERT INTO retention_state (package_id, tenant, expires_at, legal_hold) \
                 VALUES ($1, $2, NULL, false)",
                &retention,
            ),
        ],
    )
    .await?;
    Ok(())
}

/// The views of a run of package creations, set-based: two statements whatever their number,
/// with the same rows as [`created`] one at a time.
pub(super) async fn created_together(
    tx: &Tx<'_>,
    run: &[(&StoredEvent, &PackageCreated)],
    then: Then<'_>,
) -> Result<()> {
    let ids: Vec<uuid::Uuid> = run.iter().map(|(_, p)| p.package_id.0).collect();
    let tenants: Vec<&str> = run.iter().map(|(_, p)| p.tenant.as_str()).collect();
    let producers: Vec<&str> = run.iter().map(|(_, p)| p.producer.as_str()).collect();
    let subjects: Vec<&str> = run.iter().map(|(_, p)| p.subject.as_str()).collect();
    let classes: Vec<&str> = run
        .iter()
        .map(|(_, p)| p.retention_class.as_str())
        .collect();
    let metadata: Vec<serde_json::Value> = run.iter().map(|(_, p)| p.metadata.to_json()).collect();
    let times: Vec<time::OffsetDateTime> = run
        .iter()
        .map(|(_, p)| p.created_at.as_datetime())
        .collect();
    let positions: Vec<i64> = run.iter().map(|(e, _)| e.position).collect();
    let packages: [Param; 8] = [
        &ids, &tenants, &producers, &subjects, &classes, &metadata, &times, &positions,
    ];
    let retention: [Param; 2] = [&ids, &tenants];
    exec_in_order_then(
        tx,
        &[
            (
                "INSERT INTO packages (id, tenant, producer, subject, retention_class, metadata, \
                                       status, created_at, created_position) \
                 SELECT i, t, p, s, c, m, 'open', a, q \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::jsonb[], $7::timestamptz[], $8::int8[]) \
                      WITH ORDINALITY AS u(i, t, p, s, c, m, a, q, o) \
                 ORDER BY o",
                &packages,
            ),
            (
                "INSERT INTO retention_state (package_id, tenant, expires_at, legal_hold) \
                 SELECT i, t, NULL, false \
                 FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS u(i, t, o) \
                 ORDER BY o",
                &retention,
            ),
        ],
        then,
    )
    .await?;
    Ok(())
}

pub(super) async fn file_ingested(
    tx: &Tx<'_>,
    event: &StoredEvent,
    f: &FileIngested,
) -> Result<()> {
    // A replace first takes the old file out (and its counts off the package); then the new
    // file goes in exactly as any ingest does.
    if let Some(old) = f.replaced_file_id {
        let statement = tx
            .prepare_cached("DELETE FROM files WHERE id = $1 RETURNING size, blake3, package_id")
            .await?;
        let row = tx.query_opt(&statement, &[&old.0]).await?.ok_or_else(|| {
            Error::Integrity(format!("event {} replaces unknown file {old}", event.id))
        })?;
        let (removed_size, old_blob, package): (i64, Vec<u8>, uuid::Uuid) =
            (row.get(0), row.get(1), row.get(2));
        mark_unreferenced(tx, &[old_blob], f.ingested_at.as_datetime()).await?;
        exec(
            tx,
            "UPDATE packages SET file_count = file_count - 1, total_size = total_size - $2 \
             WHERE id = $1",
            &[&package, &removed_size],
        )
        .await?;
    }
    ingests_together(tx, &[(event, f)], None).await
}

/// A file leaves its open package: its counts come off the package, and its blob is
/// unreferenced if no other file names it.
pub(super) async fn file_removed(
    tx: &Tx<'_>,
    event: &StoredEvent,
    r: &crate::events::payloads::FileRemoved,
) -> Result<()> {
    let statement = tx
        .prepare_cached(
            "DELETE FROM files WHERE id = $1 AND package_id = $2 RETURNING size, blake3",
        )
        .await?;
    let row = tx
        .query_opt(&statement, &[&r.file_id.0, &r.package_id.0])
        .await?
        .ok_or_else(|| {
            Error::Integrity(format!(
                "event {} removes file {} which package {} does not hold",
                event.id, r.file_id, r.package_id
            ))
        })?;
    let (size, blob): (i64, Vec<u8>) = (row.get(0), row.get(1));
    mark_unreferenced(tx, &[blob], r.removed_at.as_datetime()).await?;
    exec(
        tx,
        "UPDATE packages SET file_count = file_count - 1, total_size = total_size - $2 \
         WHERE id = $1",
        &[&r.package_id.0, &size],
    )
    .await?;
    Ok(())
}

pub(super) async fn finalized(tx: &Tx<'_>, event: &StoredEvent, m: &Manifest) -> Result<()> {
    let digest = Manifest::digest_of(&event.payload).to_string();
    let updated = tx
        .execute(
            "UPDATE packages SET status = 'finalized', finalized_at = $2, manifest_digest = $3 \
             WHERE id = $1 AND status = 'open'",
            &[
                &m.package.id.0,
                &m.package.finalized_at.as_datetime(),
                &digest,
            ],
        )
        .await?;
    if updated != 1 {
        return Err(Error::Integrity(format!(
            "event {} finalizes package {} which is not open",
            event.id, m.package.id
        )));
    }
    exec(
        tx,
        "INSERT INTO manifests (package_id, tenant, digest, cbor) VALUES ($1, $2, $3, $4)",
        &[
            &m.package.id.0,
            &m.package.tenant.as_str(),
            &digest,
            &event.payload.as_ref(),
        ],
    )
    .await?;
    exec(
        tx,
        "UPDATE retention_state SET expires_at = $2, legal_hold = $3 WHERE package_id = $1",
        &[
            &m.package.id.0,
            &m.retention_summary.expires_at.map(|t| t.as_datetime()),
            &m.retention_summary.legal_hold,
        ],
    )
    .await?;
    Ok(())
}

/// A run of ingests as one array per column, for `unnest`.
struct Columns<'a> {
    blake3: Vec<Vec<u8>>,
    sha256: Vec<Vec<u8>>,
    sizes: Vec<i64>,
    at: Vec<time::OffsetDateTime>,
    backend: Vec<&'a str>,
    key: Vec<&'a str>,
    id: Vec<uuid::Uuid>,
    tenant: Vec<&'a str>,
    package: Vec<uuid::Uuid>,
    path: Vec<&'a str>,
    media: Vec<&'a str>,
    position: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(run: &[(&'a StoredEvent, &'a FileIngested)]) -> Result<Self> {
        let n = run.len();
        let mut c = Columns {
            blake3: Vec::with_capacity(n),
            sha256: Vec::with_capacity(n),
            sizes: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            backend: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            id: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            package: Vec::with_capacity(n),
            path: Vec::with_capacity(n),
            media: Vec::with_capacity(n),
            position: Vec::with_capacity(n),
        };
        for (event, f) in run {
            c.blake3.push(hex_bytes(&f.blake3)?);
            c.sha256.push(hex_bytes(&f.sha256)?);
            c.sizes.push(
                i64::try_from(f.size)
                    .map_err(|_| Error::Integrity("file size overflows".into()))?,
            );
            c.at.push(f.ingested_at.as_datetime());
            c.backend.push(f.backend_id.as_str());
            c.key.push(f.storage_key.as_str());
            c.id.push(f.file_id.0);
            c.tenant.push(event.tenant.as_str());
            c.package.push(f.package_id.0);
            c.path.push(f.relative_path.as_str());
            c.media.push(f.media_type.as_str());
            c.position.push(event.position);
        }
        Ok(c)
    }
}

/// The views of ingests that replace nothing (one, or a run of them), set-based: five
/// statements whatever their number, sent together (tokio-postgres pipelines concurrent
/// requests on one connection, in order). New blobs go in in digest order (two writers adding
/// the same new blobs wait for each other in one order); the existing ones a run names are
/// locked before (`locks.rs`).
pub(super) async fn ingests_together(
    tx: &Tx<'_>,
    run: &[(&StoredEvent, &FileIngested)],
    then: Then<'_>,
) -> Result<()> {
    let Columns {
        blake3,
        sha256,
        sizes,
        at,
        backend,
        key,
        id,
        tenant,
        package,
        path,
        media,
        position,
    } = Columns::of(run)?;
    let blobs: [Param; 4] = [&blake3, &sha256, &sizes, &at];
    let locations: [Param; 4] = [&blake3, &backend, &key, &at];
    let files: [Param; 9] = [
        &id, &tenant, &package, &path, &sizes, &media, &blake3, &at, &position,
    ];
    let referenced: [Param; 1] = [&blake3];
    let packages: [Param; 2] = [&package, &sizes];
    exec_in_order_then(
        tx,
        &[
            (
                "INSERT INTO blobs (blake3, sha256, size, created_at) \
                 SELECT b, s, z, t FROM unnest($1::bytea[], $2::bytea[], $3::int8[], \
                                             $4::timestamptz[]) WITH ORDINALITY AS u(b, s, z, t, o) \
                 ORDER BY b, o \
                 ON CONFLICT (blake3) DO NOTHING",
                &blobs,
            ),
            (
                "INSERT INTO storage_locations (blake3, backend_id, key, status, stored_at) \
                 SELECT DISTINCT ON (b, k) b, k, y, 'present', t \
                 FROM unnest($1::bytea[], $2::text[], $3::text[], $4::timestamptz[]) \
                      WITH ORDINALITY AS u(b, k, y, t, o) \
                 ORDER BY b, k, o \
                 ON CONFLICT (blake3, backend_id) DO UPDATE SET status = 'present', key = EXCLUDED.key \
                 WHERE storage_locations.status <> 'present'",
                &locations,
            ),
            (
                "INSERT INTO files (id, tenant, package_id, relative_path, size, media_type, blake3, \
                                    created_at, created_position) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int8[], \
                                      $6::text[], $7::bytea[], $8::timestamptz[], $9::int8[])",
                &files,
            ),
            (
                "UPDATE blobs SET unreferenced_since = NULL \
                 WHERE blake3 = ANY($1) AND unreferenced_since IS NOT NULL",
                &referenced,
            ),
            (
                "UPDATE packages p SET file_count = p.file_count + d.files, \
                                       total_size = p.total_size + d.bytes \
                 FROM (SELECT package_id, count(*)::int AS files, sum(size)::int8 AS bytes \
                       FROM unnest($1::uuid[], $2::int8[]) AS u(package_id, size) \
                       GROUP BY package_id) d \
                 WHERE p.id = d.package_id",
                &packages,
            ),
        ],
        then,
    )
    .await?;
    Ok(())
}

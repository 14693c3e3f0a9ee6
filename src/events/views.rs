//! Projecting events onto the view tables. Used both by live mutations and by replay, so the
//! two cannot disagree.

use super::log::StoredEvent;
use super::log::Tx;
use super::payloads::{
    FileIngested, LocationAdded, LocationRemoved, LocationVerified, PackageCreated, types,
};
use super::views_retention as retention;
use crate::error::{Error, Result};
use crate::identity::Digest;
use crate::manifest::{Manifest, from_canonical_cbor};
use tokio_postgres::types::ToSql;

/// The view tables, in dump and truncate order.
pub const VIEW_TABLES: &[(&str, &str)] = &[
    ("packages", "id"),
    ("blobs", "blake3"),
    ("storage_locations", "blake3, backend_id"),
    ("files", "id"),
    ("manifests", "package_id"),
    ("retention_state", "package_id"),
    ("tenant_quotas", "tenant"),
    ("tenant_usage", "tenant"),
];

/// Applies one event to the views.
pub async fn apply(tx: &Tx<'_>, event: &StoredEvent) -> Result<()> {
    match event.event_type.as_str() {
        types::PACKAGE_CREATED => package_created(tx, event, &decode(event)?).await,
        types::FILE_INGESTED => file_ingested(tx, event, &decode(event)?).await,
        types::PACKAGE_FINALIZED => {
            let manifest = Manifest::from_cbor(&event.payload)?;
            package_finalized(tx, event, &manifest).await
        }
        types::LOCATION_VERIFIED => location_verified(tx, &decode(event)?).await,
        types::LOCATION_ADDED => location_added(tx, &decode(event)?).await,
        types::LOCATION_REMOVED => location_removed(tx, &decode(event)?).await,
        types::BLOB_COLLECTED => retention::blob_collected(tx, &decode(event)?).await,
        types::CLASS_DEFINED => retention::class_defined(tx, &decode(event)?).await,
        types::HOLD_SET => retention::hold_set(tx, &decode(event)?).await,
        types::HOLD_RELEASED => retention::hold_released(tx, &decode(event)?).await,
        types::CLASS_CHANGED => retention::class_changed(tx, &decode(event)?).await,
        types::PACKAGE_EXPIRED => retention::package_expired(tx, &decode(event)?).await,
        types::QUOTA_SET => quota_set(tx, &decode(event)?).await,
        other => Err(Error::Integrity(format!(
            "event {} has unknown type `{other}`; this build cannot apply it",
            event.sequence
        ))),
    }
}

/// Applies `events` in order. A run of ingests that replace nothing is applied with one
/// set-based statement per view table (a batch of a thousand links, or a replay of a thousand
/// uploads, is five statements, not five thousand), with the same result as one event at a
/// time: first occurrences win where the per-event statements would keep the first (blob
/// creation time, the location's key), counters add up. Anything else is applied one event at a
/// time.
pub async fn apply_all(tx: &Tx<'_>, events: &[StoredEvent]) -> Result<()> {
    const MAX_RUN: usize = 2000;
    let mut rest = events;
    while let Some(first) = rest.first() {
        let mut run = Vec::new();
        for event in rest.iter().take(MAX_RUN) {
            match independent_ingest(event) {
                Some(f) => run.push((event, f)),
                None => break,
            }
        }
        if run.is_empty() {
            apply(tx, first).await?;
            rest = &rest[1..];
        } else {
            rest = &rest[run.len()..];
            let run: Vec<_> = run.iter().map(|(e, f)| (*e, f)).collect();
            ingests_together(tx, &run).await?;
        }
    }
    Ok(())
}

async fn quota_set(tx: &Tx<'_>, e: &super::payloads::QuotaSet) -> Result<()> {
    let limit = |n: Option<u64>| n.map(|n| n.min(i64::MAX as u64) as i64);
    exec(
        tx,
        "INSERT INTO tenant_quotas (tenant, max_bytes, max_packages, max_upload_sessions, set_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant) DO UPDATE SET max_bytes = EXCLUDED.max_bytes, \
           max_packages = EXCLUDED.max_packages, \
           max_upload_sessions = EXCLUDED.max_upload_sessions, set_at = EXCLUDED.set_at",
        &[
            &e.tenant.as_str(),
            &limit(e.max_bytes),
            &limit(e.max_packages),
            &limit(e.max_upload_sessions),
            &e.set_at.as_datetime(),
        ],
    )
    .await
    .map(drop)
}

/// The ingest this event records, if it replaces nothing.
fn independent_ingest(event: &StoredEvent) -> Option<FileIngested> {
    if event.event_type != types::FILE_INGESTED {
        return None;
    }
    decode::<FileIngested>(event)
        .ok()
        .filter(|f| f.replaced_file_id.is_none())
}

/// The views of ingests that replace nothing (one, or a run of them), set-based: five
/// statements whatever their number, sent together (tokio-postgres pipelines concurrent
/// requests on one connection, in order), so the sequence lock waits one round trip for them.
async fn ingests_together(tx: &Tx<'_>, run: &[(&StoredEvent, &FileIngested)]) -> Result<()> {
    let n = run.len();
    let (mut blake3, mut sha256) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut sizes, mut at) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut backend, mut key) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut id, mut tenant, mut package) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut path, mut media, mut sequence) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (event, f) in run {
        blake3.push(hex_bytes(&f.blake3)?);
        sha256.push(hex_bytes(&f.sha256)?);
        sizes.push(
            i64::try_from(f.size).map_err(|_| Error::Integrity("file size overflows".into()))?,
        );
        at.push(f.ingested_at.as_datetime());
        backend.push(f.backend_id.as_str());
        key.push(f.storage_key.as_str());
        id.push(f.file_id.0);
        tenant.push(event.tenant.as_str());
        package.push(f.package_id.0);
        path.push(f.relative_path.as_str());
        media.push(f.media_type.as_str());
        sequence.push(event.sequence);
    }
    let blobs: [Param; 4] = [&blake3, &sha256, &sizes, &at];
    let locations: [Param; 4] = [&blake3, &backend, &key, &at];
    let files: [Param; 9] = [
        &id, &tenant, &package, &path, &sizes, &media, &blake3, &at, &sequence,
    ];
    let referenced: [Param; 1] = [&blake3];
    let packages: [Param; 2] = [&package, &sizes];
    exec_in_order(
        tx,
        &[
            (
                "INSERT INTO blobs (blake3, sha256, size, created_at) \
                 SELECT b, s, z, t FROM unnest($1::bytea[], $2::bytea[], $3::int8[], \
                                             $4::timestamptz[]) WITH ORDINALITY AS u(b, s, z, t, o) \
                 ORDER BY o \
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
                                    created_at, created_sequence) \
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
    )
    .await?;
    Ok(())
}

/// One statement parameter.
type Param<'a> = &'a (dyn ToSql + Sync);

/// Executes statements in one round trip, in the order given. Each is prepared first (once
/// per connection): tokio-postgres sends a request when it is first polled, so an execute
/// whose statement still had to be prepared would go out after those of statements prepared
/// already, and PostgreSQL would run them out of order (a `retention_state` row before its
/// package: a foreign-key violation).
pub(super) async fn exec_in_order(tx: &Tx<'_>, statements: &[(&str, &[Param<'_>])]) -> Result<()> {
    let prepared =
        futures::future::try_join_all(statements.iter().map(|(sql, _)| tx.prepare_cached(sql)))
            .await?;
    futures::future::try_join_all(
        prepared
            .iter()
            .zip(statements)
            .map(|(statement, (_, params))| tx.execute(statement, params)),
    )
    .await?;
    Ok(())
}

/// Executes with a statement prepared once per connection.
pub(super) async fn exec(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&statement, params).await?)
}

fn decode<T: serde::de::DeserializeOwned>(event: &StoredEvent) -> Result<T> {
    from_canonical_cbor(&event.payload)
        .map_err(|e| Error::Integrity(format!("event {} payload: {e}", event.sequence)))
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    Ok(Digest::from_hex(hex)
        .map_err(|e| Error::Integrity(e.to_string()))?
        .0
        .to_vec())
}

async fn package_created(tx: &Tx<'_>, event: &StoredEvent, p: &PackageCreated) -> Result<()> {
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
        &event.sequence,
    ];
    let retention: [Param; 2] = [id, &tenant];
    // Both statements in one round trip, run in this order.
    exec_in_order(
        tx,
        &[
            (
                "INSERT INTO packages (id, tenant, producer, subject, retention_class, metadata, \
                                       status, created_at, created_sequence) \
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

async fn file_ingested(tx: &Tx<'_>, event: &StoredEvent, f: &FileIngested) -> Result<()> {
    // A replace first takes the old file out (and its counts off the package); then the new
    // file goes in exactly as any ingest does.
    if let Some(old) = f.replaced_file_id {
        let statement = tx
            .prepare_cached("DELETE FROM files WHERE id = $1 RETURNING size, blake3, package_id")
            .await?;
        let row = tx.query_opt(&statement, &[&old.0]).await?.ok_or_else(|| {
            Error::Integrity(format!(
                "event {} replaces unknown file {old}",
                event.sequence
            ))
        })?;
        let (removed_size, old_blob, package): (i64, Vec<u8>, uuid::Uuid) =
            (row.get(0), row.get(1), row.get(2));
        retention::mark_unreferenced(tx, &[old_blob], f.ingested_at.as_datetime()).await?;
        exec(
            tx,
            "UPDATE packages SET file_count = file_count - 1, total_size = total_size - $2 \
             WHERE id = $1",
            &[&package, &removed_size],
        )
        .await?;
    }
    ingests_together(tx, &[(event, f)]).await
}

async fn package_finalized(tx: &Tx<'_>, event: &StoredEvent, m: &Manifest) -> Result<()> {
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
            event.sequence, m.package.id
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

async fn location_verified(tx: &Tx<'_>, v: &LocationVerified) -> Result<()> {
    exec(
        tx,
        "UPDATE storage_locations SET status = $3, verified_at = $4 \
         WHERE blake3 = $1 AND backend_id = $2 AND status <> 'deleted'",
        &[
            &hex_bytes(&v.blake3)?,
            &v.backend_id,
            &v.status.as_str(),
            &v.verified_at.as_datetime(),
        ],
    )
    .await?;
    Ok(())
}

async fn location_added(tx: &Tx<'_>, a: &LocationAdded) -> Result<()> {
    exec(
        tx,
        "INSERT INTO storage_locations (blake3, backend_id, key, status, stored_at) \
         VALUES ($1, $2, $3, 'present', $4) \
         ON CONFLICT (blake3, backend_id) DO UPDATE \
         SET status = 'present', key = EXCLUDED.key, stored_at = EXCLUDED.stored_at, \
             verified_at = NULL",
        &[
            &hex_bytes(&a.blake3)?,
            &a.backend_id,
            &a.storage_key,
            &a.added_at.as_datetime(),
        ],
    )
    .await?;
    Ok(())
}

async fn location_removed(tx: &Tx<'_>, r: &LocationRemoved) -> Result<()> {
    exec(
        tx,
        "UPDATE storage_locations SET status = 'deleted' WHERE blake3 = $1 AND backend_id = $2",
        &[&hex_bytes(&r.blake3)?, &r.backend_id],
    )
    .await?;
    Ok(())
}

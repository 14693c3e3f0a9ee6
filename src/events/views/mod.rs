//! Projecting events onto the view tables. Used both by live mutations and by replay, so the
//! two cannot disagree.

mod packages;
mod retention;
mod storage;
mod tenants;

use super::kinds::{Payload, PayloadCodec};
use super::log::StoredEvent;
use super::payloads::FileIngested;
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::identity::Digest;
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
    ("tenant_usage", "tenant, slot"),
];

/// Applies one event to the views.
pub async fn apply(tx: &Tx<'_>, event: &StoredEvent) -> Result<()> {
    let payload = Payload::decode(&event.event_type, &event.payload)
        .map_err(|e| Error::Integrity(format!("event {} payload: {e}", event.id)))?
        .ok_or_else(|| {
            Error::Integrity(format!(
                "event {} has unknown type `{}`; this build cannot apply it",
                event.id, event.event_type
            ))
        })?;
    match &payload {
        Payload::PackageCreated(p) => packages::created(tx, event, p).await,
        Payload::FileIngested(f) => packages::file_ingested(tx, event, f).await,
        Payload::PackageFinalized(f) => packages::finalized(tx, event, &f.manifest).await,
        Payload::LocationVerified(v) => storage::location_verified(tx, v).await,
        Payload::LocationAdded(a) => storage::location_added(tx, a).await,
        Payload::LocationRemoved(r) => storage::location_removed(tx, r).await,
        Payload::BlobCollected(c) => storage::blob_collected(tx, c).await,
        Payload::ClassDefined(c) => retention::class_defined(tx, c).await,
        Payload::HoldSet(h) => retention::hold_set(tx, h).await,
        Payload::HoldReleased(h) => retention::hold_released(tx, h).await,
        Payload::ClassChanged(c) => retention::class_changed(tx, c).await,
        Payload::PackageExpired(e) => retention::package_expired(tx, e).await,
        Payload::QuotaSet(q) => tenants::quota_set(tx, q).await,
    }
}

/// Applies `events` in order. A run of ingests that replace nothing is applied with one
/// set-based statement per view table (a batch of a thousand links, or a replay of a thousand
/// uploads, is five statements, not five thousand), with the same result as one event at a
/// time: first occurrences win where the per-event statements would keep the first (blob
/// creation time, the location's key), counters add up. Runs of package creations, of expiries
/// and of blob collections are applied the same way, a few statements per run, with the rows one
/// event at a time would leave. Anything else is applied one event at a time.
pub async fn apply_all(tx: &Tx<'_>, events: &[StoredEvent]) -> Result<()> {
    let mut rest = events;
    while let Some(first) = rest.first() {
        let applied = match Run::of(rest) {
            Run::Ingests(run) => {
                let run: Vec<_> = run.iter().map(|(e, f)| (*e, f)).collect();
                packages::ingests_together(tx, &run).await?;
                run.len()
            }
            Run::Creations(run) => {
                let run: Vec<_> = run.iter().map(|(e, p)| (*e, p)).collect();
                packages::created_together(tx, &run).await?;
                run.len()
            }
            Run::Expiries(run) => {
                retention::expired_together(tx, &run).await?;
                run.len()
            }
            Run::Collections(run) => {
                storage::collected_together(tx, &run).await?;
                run.len()
            }
            Run::One => {
                apply(tx, first).await?;
                1
            }
        };
        rest = &rest[applied..];
    }
    Ok(())
}

/// The events at the head of a list that can be applied together.
enum Run<'a> {
    /// Ingests that replace nothing.
    Ingests(Vec<(&'a StoredEvent, FileIngested)>),
    /// Package creations (each a package of its own: they never touch each other's rows).
    Creations(Vec<(&'a StoredEvent, super::payloads::PackageCreated)>),
    /// Package expiries, each package once.
    Expiries(Vec<super::payloads::PackageExpired>),
    /// Blob collections.
    Collections(Vec<super::payloads::BlobCollected>),
    /// Anything else: one event, applied alone.
    One,
}

impl<'a> Run<'a> {
    /// Most events in one run (bounds the statements' array parameters).
    const MAX: usize = 2000;

    fn of(events: &'a [StoredEvent]) -> Self {
        let head = events.iter().take(Self::MAX);
        let ingests: Vec<_> = head
            .clone()
            .map_while(|e| independent_ingest(e).map(|f| (e, f)))
            .collect();
        if !ingests.is_empty() {
            return Run::Ingests(ingests);
        }
        let creations: Vec<_> = head
            .clone()
            .map_while(|e| creation(e).map(|p| (e, p)))
            .collect();
        // Alone, the one-event path is as quick.
        if creations.len() > 1 {
            return Run::Creations(creations);
        }
        let mut seen = std::collections::HashSet::new();
        let expiries: Vec<_> = head
            .clone()
            .map_while(|e| expiry(e).filter(|x| seen.insert(x.package_id)))
            .collect();
        if expiries.len() > 1 {
            return Run::Expiries(expiries);
        }
        let collections: Vec<_> = head.map_while(collection).collect();
        if collections.len() > 1 {
            return Run::Collections(collections);
        }
        Run::One
    }
}

/// The expiry this event records.
fn expiry(event: &StoredEvent) -> Option<super::payloads::PackageExpired> {
    if event.event_type != super::payloads::PackageExpired::TYPE {
        return None;
    }
    super::payloads::PackageExpired::decode(&event.payload).ok()
}

/// The blob this event collects.
fn collection(event: &StoredEvent) -> Option<super::payloads::BlobCollected> {
    if event.event_type != super::payloads::BlobCollected::TYPE {
        return None;
    }
    super::payloads::BlobCollected::decode(&event.payload).ok()
}

/// The package this event creates.
fn creation(event: &StoredEvent) -> Option<super::payloads::PackageCreated> {
    if event.event_type != super::payloads::PackageCreated::TYPE {
        return None;
    }
    super::payloads::PackageCreated::decode(&event.payload).ok()
}

/// The ingest this event records, if it replaces nothing.
fn independent_ingest(event: &StoredEvent) -> Option<FileIngested> {
    if event.event_type != FileIngested::TYPE {
        return None;
    }
    FileIngested::decode(&event.payload)
        .ok()
        .filter(|f| f.replaced_file_id.is_none())
}

/// One statement parameter.
pub(super) type Param<'a> = &'a (dyn ToSql + Sync);

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

pub(super) fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    Ok(Digest::from_hex(hex)
        .map_err(|e| Error::Integrity(e.to_string()))?
        .0
        .to_vec())
}

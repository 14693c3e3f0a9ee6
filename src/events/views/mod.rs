//! Projecting events onto the view tables. Used both by live mutations and by replay, so the
//! two cannot disagree.

mod locks;
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
pub(crate) use locks::TouchedBlobs;
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
        Payload::FileRemoved(r) => packages::file_removed(tx, event, r).await,
        Payload::PackageAbandoned(a) => {
            let removal = retention::Removal {
                package_id: a.package_id,
                status: "abandoned",
                by: &a.abandoned_by,
                reason: a.reason.as_deref(),
                at: a.abandoned_at,
            };
            retention::package_removed(tx, event, &removal).await
        }
        Payload::PackageWithdrawn(w) => {
            let removal = retention::Removal {
                package_id: w.package_id,
                status: "withdrawn",
                by: &w.withdrawn_by,
                reason: w.reason.as_deref(),
                at: w.withdrawn_at,
            };
            retention::package_removed(tx, event, &removal).await
        }
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
    apply_all_then(tx, events, None).await
}

/// A statement to run once the views are applied; sent with the last run's statements where
/// that run is one set of statements (one round trip fewer), else after them.
pub(crate) type Then<'a> = Option<(&'a str, &'a [Param<'a>])>;

/// [`apply_all`], then `then`.
pub(crate) async fn apply_all_then(
    tx: &Tx<'_>,
    events: &[StoredEvent],
    mut then: Then<'_>,
) -> Result<()> {
    let mut rest = events;
    while let Some(first) = rest.first() {
        let run = Run::of(rest);
        let whole = run.len() == rest.len();
        let tail = if whole { then.take() } else { None };
        let applied = match run {
            Run::Ingests(run) => {
                let run: Vec<_> = run.iter().map(|(e, f)| (*e, f)).collect();
                packages::ingests_together(tx, &run, tail).await?;
                run.len()
            }
            Run::Creations(run) => {
                let run: Vec<_> = run.iter().map(|(e, p)| (*e, p)).collect();
                packages::created_together(tx, &run, tail).await?;
                run.len()
            }
            Run::Expiries(run) => {
                retention::expired_together(tx, &run).await?;
                then = then.or(tail);
                run.len()
            }
            Run::Collections(run) => {
                storage::collected_together(tx, &run, tail).await?;
                run.len()
            }
            Run::One => {
                apply(tx, first).await?;
                then = then.or(tail);
                1
            }
        };
        rest = &rest[applied..];
    }
    if let Some((sql, params)) = then {
        exec(tx, sql, params).await?;
    }
    Ok(())
}

/// The events at the head of a list that can be applied together.
enum Run<'a> {
    /// Ingests that replace nothing.
    Ingests(Vec<(&'a StoredEvent, FileIngested)>),
    /// Package creations (each a package of its own; what they share, their tenant's usage
    /// slots, only adds up).
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

    /// How many events it applies.
    fn len(&self) -> usize {
        match self {
            Run::Ingests(run) => run.len(),
            Run::Creations(run) => run.len(),
            Run::Expiries(run) => run.len(),
            Run::Collections(run) => run.len(),
            Run::One => 1,
        }
    }

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
        // Even alone: the set-based statements take the events' INSERT in their round trip.
        if !creations.is_empty() {
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

/// The payload of `event` if it is of type `type_name` (and decodes).
fn payload_of<P: PayloadCodec>(event: &StoredEvent, type_name: &str) -> Option<P> {
    if event.event_type != type_name {
        return None;
    }
    P::decode(&event.payload).ok()
}

fn expiry(event: &StoredEvent) -> Option<super::payloads::PackageExpired> {
    payload_of(event, super::payloads::PackageExpired::TYPE)
}

fn collection(event: &StoredEvent) -> Option<super::payloads::BlobCollected> {
    payload_of(event, super::payloads::BlobCollected::TYPE)
}

fn creation(event: &StoredEvent) -> Option<super::payloads::PackageCreated> {
    payload_of(event, super::payloads::PackageCreated::TYPE)
}

/// The ingest this event records, if it replaces nothing.
fn independent_ingest(event: &StoredEvent) -> Option<FileIngested> {
    payload_of::<FileIngested>(event, FileIngested::TYPE).filter(|f| f.replaced_file_id.is_none())
}

/// One statement parameter.
pub(crate) type Param<'a> = &'a (dyn ToSql + Sync);

/// Executes statements in one round trip, in the order given. Each is prepared first (once
/// per connection): tokio-postgres sends a request when it is first polled, so an execute
/// whose statement still had to be prepared would go out after those of statements prepared
/// already, and PostgreSQL would run them out of order (a `retention_state` row before its
/// package: a foreign-key violation).
pub(super) async fn exec_in_order(tx: &Tx<'_>, statements: &[(&str, &[Param<'_>])]) -> Result<()> {
    exec_in_order_then(tx, statements, None).await
}

/// [`exec_in_order`], `then` (if any) sent last with the others.
pub(super) async fn exec_in_order_then(
    tx: &Tx<'_>,
    statements: &[(&str, &[Param<'_>])],
    then: Then<'_>,
) -> Result<()> {
    let statements: Vec<(&str, &[Param<'_>])> = statements.iter().copied().chain(then).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Metadata, PackageId, TenantId, Timestamp};
    use crate::events::DomainEvent;
    use crate::events::payloads::{BlobCollected, PackageCreated, PackageExpired};

    fn stored(event: DomainEvent) -> StoredEvent {
        StoredEvent {
            sequence: 1,
            position: 1,
            id: uuid::Uuid::now_v7(),
            event_type: event.type_name().to_owned(),
            tenant: event.tenant().clone(),
            subject_id: event.payload().subject_id(),
            occurred_at: event.payload().occurred_at(),
            payload: event.encode().unwrap().into(),
            chain: None,
        }
    }

    fn created() -> StoredEvent {
        stored(DomainEvent::new(PackageCreated {
            package_id: PackageId::generate(),
            tenant: TenantId::default_tenant(),
            producer: "p".into(),
            subject: "s".into(),
            retention_class: "short".into(),
            metadata: Metadata::default(),
            created_at: Timestamp::parse("2026-12-06T00:00:00Z").unwrap(),
        }))
    }

    fn expired(package_id: PackageId) -> StoredEvent {
        let at = Timestamp::parse("2026-12-06T00:00:00Z").unwrap();
        stored(DomainEvent::of(
            &TenantId::default_tenant(),
            PackageExpired {
                package_id,
                retention_class: "short".into(),
                reason: "due".into(),
                due_at: at,
                expired_at: at,
            },
        ))
    }

    fn collected(n: u8) -> StoredEvent {
        stored(DomainEvent::of(
            &TenantId::default_tenant(),
            BlobCollected {
                blake3: hex::encode([n; 32]),
                size: 1,
                backends: vec!["local".into()],
                unreferenced_since: Timestamp::parse("2026-12-05T00:00:00Z").unwrap(),
                collected_at: Timestamp::parse("2026-12-06T00:00:00Z").unwrap(),
            },
        ))
    }

    /// Runs form where they may and end where they must: at another kind of event, and at a
    /// package expired a second time.
    #[test]
    fn runs_group_what_may_be_applied_together() {
        let kind = |events: &[StoredEvent]| match Run::of(events) {
            Run::Ingests(r) => ("ingests", r.len()),
            Run::Creations(r) => ("creations", r.len()),
            Run::Expiries(r) => ("expiries", r.len()),
            Run::Collections(r) => ("collections", r.len()),
            Run::One => ("one", 1),
        };
        let (a, b) = (PackageId::generate(), PackageId::generate());
        let log = vec![
            created(),
            created(),
            created(),
            expired(a),
            expired(b),
            expired(a),
            collected(1),
            collected(2),
            created(),
        ];
        assert_eq!(kind(&log), ("creations", 3));
        assert_eq!(kind(&log[3..]), ("expiries", 2));
        assert_eq!(kind(&log[5..]), ("one", 1));
        assert_eq!(kind(&log[6..]), ("collections", 2));
        // A creation alone is a run too: its statements carry the events' INSERT.
        assert_eq!(kind(&log[8..]), ("creations", 1));
    }
}

//! Appending to and reading the log.

use super::kinds::DomainEvent;
use crate::db::Tx;
use crate::domain::{TenantId, Timestamp};
use crate::error::{Error, Result};
use bytes::Bytes;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

/// The NOTIFY channel (see the `events_notify` trigger); the payload is the highest sequence
/// the transaction committed and, after a space, the tenants whose events it committed.
pub const NOTIFY_CHANNEL: &str = "artifactstore_events";

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Gapless, commit-ordered position in the log (from 1).
    pub sequence: i64,
    /// Unique id.
    pub id: Uuid,
    /// e.g. `v1.package.created`.
    pub event_type: String,
    /// Owner.
    pub tenant: TenantId,
    /// What the event is about.
    pub subject_id: Uuid,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// Canonical CBOR.
    pub payload: Bytes,
}

impl StoredEvent {
    fn from_row(row: &Row) -> Result<Self> {
        Ok(StoredEvent {
            sequence: row.get("sequence"),
            id: row.get("id"),
            event_type: row.get("type"),
            tenant: TenantId::new(row.get("tenant"))?,
            subject_id: row.get("subject_id"),
            occurred_at: Timestamp::from_datetime(row.get("occurred_at")),
            payload: Bytes::from(row.get::<_, Vec<u8>>("payload")),
        })
    }
}

/// Takes `n` sequence numbers and inserts the events, in one statement. The counter row stays
/// locked until the transaction ends, which is what makes the numbering gapless and
/// commit-ordered; so this statement should be among the last of the transaction.
const APPEND: &str = "\
    WITH counter AS ( \
        UPDATE event_counter SET last_sequence = last_sequence + cardinality($1::uuid[]) \
        RETURNING last_sequence) \
    INSERT INTO events (sequence, id, type, tenant, subject_id, occurred_at, payload) \
    SELECT counter.last_sequence - cardinality($1::uuid[]) + e.ord, \
           e.id, e.type, e.tenant, e.subject_id, e.occurred_at, e.payload \
    FROM counter, unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[], $6::bytea[]) \
         WITH ORDINALITY AS e(id, type, tenant, subject_id, occurred_at, payload, ord) \
    RETURNING sequence, id";

/// Appends events, taking the next sequence numbers (see [`APPEND`]).
pub async fn append(tx: &Tx<'_>, events: &[DomainEvent]) -> Result<Vec<StoredEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        stored.push(StoredEvent {
            sequence: 0,
            id: Uuid::now_v7(),
            event_type: event.type_name().to_owned(),
            tenant: event.tenant().clone(),
            subject_id: event.payload().subject_id(),
            occurred_at: event.payload().occurred_at(),
            payload: Bytes::from(event.encode()?),
        });
    }
    let ids: Vec<Uuid> = stored.iter().map(|e| e.id).collect();
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    let tenants: Vec<&str> = stored.iter().map(|e| e.tenant.as_str()).collect();
    let subjects: Vec<Uuid> = stored.iter().map(|e| e.subject_id).collect();
    let times: Vec<time::OffsetDateTime> =
        stored.iter().map(|e| e.occurred_at.as_datetime()).collect();
    let payloads: Vec<&[u8]> = stored.iter().map(|e| e.payload.as_ref()).collect();
    let statement = tx.prepare_cached(APPEND).await?;
    let rows = tx
        .query(
            &statement,
            &[&ids, &types, &tenants, &subjects, &times, &payloads],
        )
        .await?;
    for row in rows {
        let id: Uuid = row.get(1);
        let event = stored
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| Error::Integrity("append returned an unknown event id".into()))?;
        event.sequence = row.get(0);
    }
    Ok(stored)
}

/// Events with sequence > `since`, in order, at most `limit`; optionally one tenant's only and
/// only types starting with `type_prefix`.
pub async fn read_after(
    client: &impl GenericClient,
    since: i64,
    limit: i64,
    tenant: Option<&TenantId>,
    type_prefix: Option<&str>,
) -> Result<Vec<StoredEvent>> {
    read_after_until(client, since, i64::MAX, limit, tenant, type_prefix).await
}

/// Like [`read_after`], but only events with sequence <= `upto`.
pub async fn read_after_until(
    client: &impl GenericClient,
    since: i64,
    upto: i64,
    limit: i64,
    tenant: Option<&TenantId>,
    type_prefix: Option<&str>,
) -> Result<Vec<StoredEvent>> {
    let prefix_pattern = type_prefix.map(|p| format!("{}%", escape_like(p)));
    let rows = client
        .query(
            "SELECT sequence, id, type, tenant, subject_id, occurred_at, payload FROM events \
             WHERE sequence > $1 AND sequence <= $5 AND ($2::text IS NULL OR tenant = $2) \
               AND ($3::text IS NULL OR type LIKE $3) \
             ORDER BY sequence LIMIT $4",
            &[
                &since,
                &tenant.map(TenantId::as_str),
                &prefix_pattern,
                &limit,
                &upto,
            ],
        )
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// The highest committed sequence (0 for an empty log).
pub async fn latest_sequence(client: &impl GenericClient) -> Result<i64> {
    let row = client
        .query_one("SELECT COALESCE(max(sequence), 0) FROM events", &[])
        .await?;
    Ok(row.get(0))
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

impl From<crate::manifest::CodecError> for Error {
    fn from(e: crate::manifest::CodecError) -> Self {
        Error::Integrity(e.to_string())
    }
}

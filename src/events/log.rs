//! Appending to and reading the log.

use super::payloads::DomainEvent;
use crate::error::{Error, Result};
use crate::model::{TenantId, Timestamp};
use bytes::Bytes;
use tokio_postgres::{GenericClient, Row, Transaction};
use uuid::Uuid;

/// The NOTIFY channel; the payload is the highest sequence the transaction committed.
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

/// Appends events, taking the next sequence numbers. The counter row stays locked until the
/// transaction ends, which is what makes the numbering gapless and commit-ordered.
pub async fn append(tx: &Transaction<'_>, events: &[DomainEvent]) -> Result<Vec<StoredEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let count = events.len() as i64;
    let last: i64 = tx
        .query_one(
            "UPDATE event_counter SET last_sequence = last_sequence + $1 RETURNING last_sequence",
            &[&count],
        )
        .await?
        .get(0);
    let insert = "INSERT INTO events (sequence, id, type, tenant, subject_id, occurred_at, payload) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7)";
    let mut stored = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let sequence = last - count + 1 + i as i64;
        let stored_event = StoredEvent {
            sequence,
            id: Uuid::now_v7(),
            event_type: event.type_name().to_owned(),
            tenant: event.tenant().clone(),
            subject_id: event.subject_id(),
            occurred_at: event.occurred_at(),
            payload: Bytes::from(event.payload()?),
        };
        tx.execute(
            insert,
            &[
                &stored_event.sequence,
                &stored_event.id,
                &stored_event.event_type,
                &stored_event.tenant.as_str(),
                &stored_event.subject_id,
                &stored_event.occurred_at.as_datetime(),
                &stored_event.payload.as_ref(),
            ],
        )
        .await?;
        stored.push(stored_event);
    }
    // Delivered at COMMIT, never on rollback. A wake-up only: readers re-read the table.
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &last.to_string()],
    )
    .await?;
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
    let prefix_pattern = type_prefix.map(|p| format!("{}%", escape_like(p)));
    let rows = client
        .query(
            "SELECT sequence, id, type, tenant, subject_id, occurred_at, payload FROM events \
             WHERE sequence > $1 AND ($2::text IS NULL OR tenant = $2) \
               AND ($3::text IS NULL OR type LIKE $3) \
             ORDER BY sequence LIMIT $4",
            &[
                &since,
                &tenant.map(TenantId::as_str),
                &prefix_pattern,
                &limit,
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

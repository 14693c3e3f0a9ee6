//! Appending to and reading the log.

use super::kinds::DomainEvent;
use crate::db::Tx;
use crate::domain::{TenantId, Timestamp};
use crate::error::{Error, Result};
use bytes::Bytes;
use tokio_postgres::{GenericClient, Row, Statement};
use uuid::Uuid;

/// The NOTIFY channel (see the `events_notify` trigger); the payload is the highest sequence
/// the transaction committed and, after a space, the tenants whose events it committed.
pub const NOTIFY_CHANNEL: &str = "artifactstore_events";

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Gapless place in the log (from 1), given by the sequencer after the event committed: an
    /// event committed before a numbering pass began is numbered before any committed later;
    /// 0 in what [`record`](super::record) returns.
    pub sequence: i64,
    /// Unique key taken when the event was recorded, before its views changed: what the views
    /// keep (e.g. `packages.created_position`) so that a replay rebuilds them identically.
    pub position: i64,
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
    /// The hash chain through this event ([`super::chain`]); `None` until it is numbered.
    pub chain: Option<[u8; 32]>,
}

impl StoredEvent {
    /// An event from a row of `events` (its columns by name, `chain` included).
    pub fn from_row(row: &Row) -> Result<Self> {
        Ok(StoredEvent {
            sequence: row.get("sequence"),
            position: row.get("position"),
            id: row.get("id"),
            event_type: row.get("type"),
            tenant: TenantId::new(row.get("tenant"))?,
            subject_id: row.get("subject_id"),
            occurred_at: Timestamp::from_datetime(row.get("occurred_at")),
            payload: Bytes::from(row.get::<_, Vec<u8>>("payload")),
            chain: row
                .get::<_, Option<&[u8]>>("chain")
                .map(|c| {
                    <[u8; 32]>::try_from(c)
                        .map_err(|_| Error::Integrity("an event's chain is not 32 bytes".into()))
                })
                .transpose()?,
        })
    }
}

/// Takes `$1` positions (see `sql/V10__event_sequencer.sql`).
const POSITIONS: &str = "SELECT nextval('event_positions') FROM generate_series(1, $1::int)";

/// Inserts the events, unnumbered, with one ticket for the statement: what the sequencer orders
/// committed events by, so this must come after every statement of the transaction that
/// changes a view (see `sql/V10__event_sequencer.sql`).
pub(super) const INSERT: &str = "\
    INSERT INTO events (position, ticket, id, type, tenant, subject_id, occurred_at, payload, \
                        digest) \
    WITH t AS MATERIALIZED (SELECT nextval('event_tickets') AS ticket) \
    SELECT e.position, t.ticket, e.id, e.type, e.tenant, e.subject_id, e.occurred_at, e.payload, \
           e.digest \
    FROM t, unnest($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::timestamptz[], \
                $7::bytea[], $8::bytea[]) \
         AS e(position, id, type, tenant, subject_id, occurred_at, payload, digest)";

/// The events as they will be stored, unnumbered, their positions not yet taken (0):
/// [`take_positions`] gives them.
pub(super) fn unpositioned(events: &[DomainEvent]) -> Result<Vec<StoredEvent>> {
    events
        .iter()
        .map(|event| {
            Ok(StoredEvent {
                sequence: 0,
                position: 0,
                id: Uuid::now_v7(),
                event_type: event.type_name().to_owned(),
                tenant: event.tenant().clone(),
                subject_id: event.payload().subject_id(),
                occurred_at: event.payload().occurred_at(),
                payload: Bytes::from(event.encode()?),
                chain: None,
            })
        })
        .collect()
}

/// The statement that takes `count` fresh positions ([`POSITIONS`]), prepared (once per
/// connection), so that sending it is one message, in the order it is polled.
pub(super) async fn positions_statement(tx: &Tx<'_>, count: usize) -> Result<(Statement, i32)> {
    let count = i32::try_from(count)
        .map_err(|_| Error::InvalidInput("too many events in one transaction".into()))?;
    Ok((tx.prepare_cached(POSITIONS).await?, count))
}

/// Gives `stored` the positions `rows` (the answer to [`positions_statement`]) hold.
pub(super) fn take_positions(stored: &mut [StoredEvent], rows: Vec<tokio_postgres::Row>) {
    for (event, row) in stored.iter_mut().zip(rows) {
        event.position = row.get(0);
    }
}

/// The parameters of [`INSERT`] for events given their positions in this transaction: the caller sends
/// it after every statement that changes a view (`views::apply_all_then`).
pub(super) struct Rows<'a> {
    positions: Vec<i64>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    tenants: Vec<&'a str>,
    subjects: Vec<Uuid>,
    times: Vec<time::OffsetDateTime>,
    payloads: Vec<&'a [u8]>,
    /// Each event's digest in the hash chain ([`super::chain::digest`]).
    digests: Vec<Vec<u8>>,
}

impl<'a> Rows<'a> {
    pub(super) fn of(stored: &'a [StoredEvent]) -> Self {
        Rows {
            positions: stored.iter().map(|e| e.position).collect(),
            ids: stored.iter().map(|e| e.id).collect(),
            types: stored.iter().map(|e| e.event_type.as_str()).collect(),
            tenants: stored.iter().map(|e| e.tenant.as_str()).collect(),
            subjects: stored.iter().map(|e| e.subject_id).collect(),
            times: stored.iter().map(|e| e.occurred_at.as_datetime()).collect(),
            payloads: stored.iter().map(|e| e.payload.as_ref()).collect(),
            digests: stored
                .iter()
                .map(|e| super::chain::digest(e).to_vec())
                .collect(),
        }
    }

    /// [`INSERT`]'s parameters, in its order.
    pub(super) fn params(&self) -> [super::views::Param<'_>; 8] {
        [
            &self.positions,
            &self.ids,
            &self.types,
            &self.tenants,
            &self.subjects,
            &self.times,
            &self.payloads,
            &self.digests,
        ]
    }
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
    Ok(
        read_page(client, since, upto, limit, i64::MAX, tenant, type_prefix)
            .await?
            .0,
    )
}

/// The payload bytes the maintenance reads (replay, `log verify`) take per page, at most:
/// their pages end early past it, as [`read_page`] does.
pub const MAINTENANCE_PAGE_BYTES: i64 = 64 << 20;

/// Like [`read_after_until`], the page also cut after the event that takes its payloads past
/// `max_bytes` (the first event always comes, however large); whether it was cut so.
pub async fn read_page(
    client: &impl GenericClient,
    since: i64,
    upto: i64,
    limit: i64,
    max_bytes: i64,
    tenant: Option<&TenantId>,
    type_prefix: Option<&str>,
) -> Result<(Vec<StoredEvent>, bool)> {
    let prefix_pattern = type_prefix.map(|p| format!("{}%", escape_like(p)));
    // The byte bound is applied to the page the limit chose (the window runs over at most
    // `limit` rows), so that only what fits comes back to this process.
    let rows = client
        .query(
            "SELECT sequence, position, id, type, tenant, subject_id, occurred_at, payload, \
                    chain, fetched \
             FROM (SELECT p.*, count(*) OVER () AS fetched, \
                          sum(octet_length(payload)) OVER (ORDER BY sequence) \
                            - octet_length(payload) AS before \
                   FROM (SELECT sequence, position, id, type, tenant, subject_id, occurred_at, \
                                payload, chain \
                         FROM events \
                         WHERE sequence > $1 AND sequence <= $5 \
                           AND ($2::text IS NULL OR tenant = $2) \
                           AND ($3::text IS NULL OR type LIKE $3) \
                         ORDER BY sequence LIMIT $4) p) w \
             WHERE before < $6 \
             ORDER BY sequence",
            &[
                &since,
                &tenant.map(TenantId::as_str),
                &prefix_pattern,
                &limit,
                &upto,
                &max_bytes,
            ],
        )
        .await?;
    let fetched: i64 = rows.first().map_or(0, |r| r.get("fetched"));
    let cut = (rows.len() as i64) < fetched;
    let events = rows
        .iter()
        .map(StoredEvent::from_row)
        .collect::<Result<_>>()?;
    Ok((events, cut))
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

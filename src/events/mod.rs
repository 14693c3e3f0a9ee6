//! The append-only event log: the source of truth.
//!
//! Every mutation is a list of [`DomainEvent`]s passed to [`record`] inside the caller's
//! transaction: the events are appended (taking gapless sequence numbers, see
//! `sql/V1__foundation.sql`) and then applied to the views by the same [`views::apply`] that
//! [`replay`] uses, so a replay rebuilds the views exactly.

pub mod bus;
pub mod kinds;
mod log;
pub mod payloads;
pub mod replay;
pub mod tail;
pub mod views;
pub mod wire;

pub use bus::{EventBus, LongPollLimits, WaitRefused, WaitingRequest};
pub use kinds::{DomainEvent, EventKind, OwnerInPayload, Payload};
pub use log::{NOTIFY_CHANNEL, StoredEvent, append, latest_sequence, read_after, read_after_until};
pub use payloads::{
    BlobCollected, ClassChanged, ClassDefined, FileIngested, HoldReleased, HoldSet, LocationAdded,
    LocationRemoved, LocationStatus, LocationVerified, PackageCreated, PackageExpired,
    PackageFinalized, QuotaSet,
};
pub use replay::{ReplayReport, dump_views, replay};
pub use tail::{TailPage, TailReader};

use crate::error::Result;

/// Appends `events` and applies them to the views, in the caller's transaction. Call it as the
/// last step before COMMIT: the sequence lock it takes is held until then.
pub async fn record(tx: &crate::db::Tx<'_>, events: Vec<DomainEvent>) -> Result<Vec<StoredEvent>> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        target: crate::telemetry::SPANS,
        "db.record",
        otel.kind = "client",
        db.system = "postgresql",
        events = events.len(),
    );
    async {
        let stored = append(tx, &events).await?;
        views::apply_all(tx, &stored).await?;
        Ok(stored)
    }
    .instrument(span)
    .await
}

/// Commits `tx`, whose events [`record`] returned, and counts them
/// ([`EVENTS_COMMITTED`](crate::metrics::EVENTS_COMMITTED)) once they are committed.
pub async fn commit(tx: crate::db::Tx<'_>, recorded: &[StoredEvent]) -> Result<()> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        target: crate::telemetry::SPANS,
        "db.commit",
        otel.kind = "client",
        db.system = "postgresql",
    );
    tx.commit().instrument(span).await?;
    crate::metrics::committed(recorded.iter().map(|e| e.event_type.as_str()));
    Ok(())
}

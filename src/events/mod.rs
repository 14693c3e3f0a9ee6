//! The append-only event log: the source of truth.
//!
//! Every mutation is a list of [`DomainEvent`]s passed to [`record`] inside the caller's
//! transaction: the events are applied to the views by the same [`views::apply_all`] that
//! [`replay`] uses, so a replay rebuilds the views exactly, then inserted unnumbered; after
//! [`commit`], the process's [`Sequencer`] gives them their gapless sequence numbers.

pub mod bus;
pub mod chain;
pub mod kinds;
mod log;
mod numbering;
pub mod payloads;
pub mod replay;
pub mod sequencer;
pub mod tail;
pub mod views;
pub mod wire;

pub use bus::{EventBus, LongPollLimits, WaitRefused, WaitingRequest};
pub use kinds::{DomainEvent, EventKind, OwnerInPayload, Payload};
pub use log::{
    MAINTENANCE_PAGE_BYTES, NOTIFY_CHANNEL, StoredEvent, latest_sequence, read_after,
    read_after_until, read_page,
};
pub use payloads::{
    BlobCollected, ClassChanged, ClassDefined, FileIngested, FileRemoved, HoldReleased, HoldSet,
    LocationAdded, LocationRemoved, LocationStatus, LocationVerified, PackageAbandoned,
    PackageCreated, PackageExpired, PackageFinalized, PackageWithdrawn, QuotaSet,
};
pub use replay::{ReplayReport, dump_views, replay};
pub use sequencer::{Sequencer, number_committed};
pub use tail::{TailPage, TailReader};

use crate::error::Result;

/// Applies `events` to the views and inserts them (unnumbered), in the caller's transaction.
/// Call it as the last step that changes anything before COMMIT: the order in which the
/// sequencer numbers committed transactions is the order in which they inserted their events.
pub async fn record(tx: &crate::db::Tx<'_>, events: Vec<DomainEvent>) -> Result<Vec<StoredEvent>> {
    let (stored, ()) = record_alongside(tx, events, async { Ok(()) }).await?;
    Ok(stored)
}

/// [`record`], with `alongside` (the caller's own statements, that must run before the views
/// change and need no answer of this one) sent in the same round trip as the events' first
/// statements, after them; its answer is returned with the events, and its error stops the
/// recording before any view changes. They run after the locks on the blob rows the events
/// take (see `views/locks.rs`): they must change nothing those locks read (`files`) and lock
/// no row a writer takes before blob rows (a package's).
pub async fn record_alongside<T>(
    tx: &crate::db::Tx<'_>,
    events: Vec<DomainEvent>,
    alongside: impl std::future::Future<Output = Result<T>>,
) -> Result<(Vec<StoredEvent>, T)> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        target: crate::telemetry::SPANS,
        "db.record",
        otel.kind = "client",
        db.system = "postgresql",
        events = events.len(),
    );
    async {
        let mut stored = log::unpositioned(&events)?;
        if stored.is_empty() {
            return Ok((stored, alongside.await?));
        }
        // One round trip: the events' positions and the locks on the blob rows they will
        // take (before any view changes), and the caller's statements. Prepared first, so
        // each is sent as it is polled, in this order.
        let touched = views::TouchedBlobs::of(&stored)?;
        let (positions, count) = log::positions_statement(tx, stored.len()).await?;
        let lock = touched.prepare(tx).await?;
        let (rows, (), value) = futures::try_join!(
            async { Ok(tx.query(&positions, &[&count]).await?) },
            touched.lock(tx, lock.as_ref()),
            alongside,
        )?;
        log::take_positions(&mut stored, rows);
        // The events go in after every view statement (their ticket orders them after every
        // lock the transaction takes), sent with the last of them.
        let rows = log::Rows::of(&stored);
        let params = rows.params();
        views::apply_all_then(tx, &stored, Some((log::INSERT, &params[..]))).await?;
        Ok((stored, value))
    }
    .instrument(span)
    .await
}

/// Commits `tx`, whose events [`record`] returned, counts them
/// ([`EVENTS_COMMITTED`](crate::metrics::EVENTS_COMMITTED)) once they are committed, and asks
/// `sequencer` for a numbering pass (without waiting for it: a reader of the log that must
/// see them waits, [`Sequencer::numbered`]).
pub async fn commit(
    tx: crate::db::Tx<'_>,
    recorded: &[StoredEvent],
    sequencer: &Sequencer,
) -> Result<()> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        target: crate::telemetry::SPANS,
        "db.commit",
        otel.kind = "client",
        db.system = "postgresql",
    );
    tx.commit().instrument(span).await?;
    crate::metrics::committed(recorded.iter().map(|e| e.event_type.as_str()));
    if !recorded.is_empty() {
        sequencer.request();
    }
    Ok(())
}

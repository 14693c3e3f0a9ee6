//! Projecting retention events onto the views (live and in replay).

use super::{Param, exec, exec_in_order};
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::events::StoredEvent;
use crate::events::payloads::{ClassChanged, ClassDefined, HoldReleased, HoldSet, PackageExpired};

pub(super) async fn class_defined(tx: &Tx<'_>, c: &ClassDefined) -> Result<()> {
    let duration = c
        .duration_seconds
        .map(|d| i64::try_from(d).map_err(|_| Error::Integrity("duration overflows".into())))
        .transpose()?;
    exec(
        tx,
        "INSERT INTO retention_classes (name, duration_seconds, description) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE \
         SET duration_seconds = EXCLUDED.duration_seconds, description = EXCLUDED.description",
        &[&c.name, &duration, &c.description],
    )
    .await?;
    Ok(())
}

pub(super) async fn hold_set(tx: &Tx<'_>, h: &HoldSet) -> Result<()> {
    exec(
        tx,
        "UPDATE retention_state SET legal_hold = true, hold_reason = $2, hold_set_at = $3 \
         WHERE package_id = $1",
        &[&h.package_id.0, &h.reason, &h.set_at.as_datetime()],
    )
    .await?;
    Ok(())
}

pub(super) async fn hold_released(tx: &Tx<'_>, h: &HoldReleased) -> Result<()> {
    exec(
        tx,
        "UPDATE retention_state SET legal_hold = false, hold_reason = NULL, hold_set_at = NULL \
         WHERE package_id = $1",
        &[&h.package_id.0],
    )
    .await?;
    Ok(())
}

pub(super) async fn class_changed(tx: &Tx<'_>, c: &ClassChanged) -> Result<()> {
    exec(
        tx,
        "UPDATE packages SET retention_class = $2 WHERE id = $1",
        &[&c.package_id.0, &c.to],
    )
    .await?;
    exec(
        tx,
        "UPDATE retention_state SET expires_at = $2 WHERE package_id = $1",
        &[&c.package_id.0, &c.expires_at.map(|t| t.as_datetime())],
    )
    .await?;
    Ok(())
}

/// A package's files leave the views; blobs only they referenced become unreferenced at `at`
/// (collected after a grace).
async fn drop_files(tx: &Tx<'_>, package: uuid::Uuid, at: time::OffsetDateTime) -> Result<()> {
    exec(
        tx,
        "UPDATE blobs b SET unreferenced_since = $2 \
         WHERE b.blake3 IN (SELECT blake3 FROM files WHERE package_id = $1) \
           AND NOT EXISTS (SELECT 1 FROM files f WHERE f.blake3 = b.blake3 AND f.package_id <> $1)",
        &[&package, &at],
    )
    .await?;
    exec(tx, "DELETE FROM files WHERE package_id = $1", &[&package]).await?;
    Ok(())
}

pub(super) async fn package_expired(tx: &Tx<'_>, e: &PackageExpired) -> Result<()> {
    drop_files(tx, e.package_id.0, e.expired_at.as_datetime()).await?;
    exec(
        tx,
        "UPDATE packages SET status = 'expired', file_count = 0, total_size = 0 WHERE id = $1",
        &[&e.package_id.0],
    )
    .await?;
    exec(
        tx,
        "UPDATE retention_state SET expired_at = $2, expiry_reason = $3 WHERE package_id = $1",
        &[&e.package_id.0, &e.expired_at.as_datetime(), &e.reason],
    )
    .await?;
    Ok(())
}

/// A package removed before its retention ran out (abandoned while open, or withdrawn once
/// finalized): as an expiry, its files leave the views and its row and manifest stay, with
/// who removed it, when and why.
pub(crate) struct Removal<'a> {
    pub package_id: crate::domain::PackageId,
    /// `abandoned` or `withdrawn`.
    pub status: &'static str,
    pub by: &'a str,
    pub reason: Option<&'a str>,
    pub at: crate::domain::Timestamp,
}

pub(super) async fn package_removed(
    tx: &Tx<'_>,
    event: &StoredEvent,
    r: &Removal<'_>,
) -> Result<()> {
    let from = if r.status == "abandoned" {
        "open"
    } else {
        "finalized"
    };
    drop_files(tx, r.package_id.0, r.at.as_datetime()).await?;
    let updated = tx
        .execute(
            "UPDATE packages SET status = $2, file_count = 0, total_size = 0, \
                    removed_at = $3, removed_by = $4, removal_reason = $5 \
             WHERE id = $1 AND status = $6",
            &[
                &r.package_id.0,
                &r.status,
                &r.at.as_datetime(),
                &r.by,
                &r.reason,
                &from,
            ],
        )
        .await?;
    if updated != 1 {
        return Err(Error::Integrity(format!(
            "event {} marks package {} {} but it is not {from}",
            event.id, r.package_id, r.status
        )));
    }
    // Gone, it no longer falls due: the expiry workers must not wait for it.
    exec(
        tx,
        "UPDATE retention_state SET expires_at = NULL WHERE package_id = $1",
        &[&r.package_id.0],
    )
    .await?;
    Ok(())
}

/// The views of a run of expiries (each package once), set-based, with the rows
/// [`package_expired`] one at a time would leave: a blob that only the run's packages
/// reference becomes unreferenced at the expiry of the last of them in the run.
pub(super) async fn expired_together(tx: &Tx<'_>, run: &[PackageExpired]) -> Result<()> {
    let ids: Vec<uuid::Uuid> = run.iter().map(|e| e.package_id.0).collect();
    let times: Vec<time::OffsetDateTime> = run.iter().map(|e| e.expired_at.as_datetime()).collect();
    let reasons: Vec<&str> = run.iter().map(|e| e.reason.as_str()).collect();
    let blobs: [Param; 2] = [&ids, &times];
    let packages: [Param; 1] = [&ids];
    let states: [Param; 3] = [&ids, &times, &reasons];
    // Sent together, run in order: the blobs' question is asked before the files go.
    exec_in_order(
        tx,
        &[
            (
                "UPDATE blobs b SET unreferenced_since = last.at \
                 FROM (SELECT DISTINCT ON (f.blake3) f.blake3, u.at \
                       FROM files f \
                       JOIN unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS u(id, at, o) \
                         ON f.package_id = u.id \
                       ORDER BY f.blake3, u.o DESC) last \
                 WHERE b.blake3 = last.blake3 \
                   AND NOT EXISTS (SELECT 1 FROM files f \
                                   WHERE f.blake3 = b.blake3 AND f.package_id <> ALL($1))",
                &blobs,
            ),
            ("DELETE FROM files WHERE package_id = ANY($1)", &packages),
            (
                "UPDATE packages SET status = 'expired', file_count = 0, total_size = 0 \
                 WHERE id = ANY($1)",
                &packages,
            ),
            (
                "UPDATE retention_state r SET expired_at = u.at, expiry_reason = u.reason \
                 FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, at, reason) \
                 WHERE r.package_id = u.id",
                &states,
            ),
        ],
    )
    .await
}

/// Marks these blobs unreferenced from `at` if no file references them any more.
pub(super) async fn mark_unreferenced(
    tx: &Tx<'_>,
    blobs: &[Vec<u8>],
    at: time::OffsetDateTime,
) -> Result<()> {
    exec(
        tx,
        "UPDATE blobs b SET unreferenced_since = $2 \
         WHERE b.blake3 = ANY($1) AND NOT EXISTS (SELECT 1 FROM files f WHERE f.blake3 = b.blake3)",
        &[&blobs, &at],
    )
    .await?;
    Ok(())
}

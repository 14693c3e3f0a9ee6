//! The views of stored copies: `storage_locations` and `blobs` as verification, moves and
//! collection change them.

use super::{Then, exec, exec_in_order_then, hex_bytes};
use crate::db::Tx;
use crate::error::Result;
use crate::events::payloads::{BlobCollected, LocationAdded, LocationRemoved, LocationVerified};

pub(super) async fn location_verified(tx: &Tx<'_>, v: &LocationVerified) -> Result<()> {
    // A deleted copy stays deleted. The condition is in the SET, not the WHERE: a WHERE on
    // the status would skip, without waiting, a row another writer is making present again,
    // and this verification would then be numbered before that writer although it applied
    // nothing after it (a replay would apply it).
    exec(
        tx,
        "UPDATE storage_locations \
         SET status = CASE WHEN status <> 'deleted' THEN $3 ELSE status END, \
             verified_at = CASE WHEN status <> 'deleted' THEN $4 ELSE verified_at END \
         WHERE blake3 = $1 AND backend_id = $2",
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

pub(super) async fn location_added(tx: &Tx<'_>, a: &LocationAdded) -> Result<()> {
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

pub(super) async fn location_removed(tx: &Tx<'_>, r: &LocationRemoved) -> Result<()> {
    exec(
        tx,
        "UPDATE storage_locations SET status = 'deleted' WHERE blake3 = $1 AND backend_id = $2",
        &[&hex_bytes(&r.blake3)?, &r.backend_id],
    )
    .await?;
    Ok(())
}

/// The views of a run of collections: one statement whatever their number (the blobs'
/// locations go with them: ON DELETE CASCADE, `sql/V14__locations_go_with_their_blob.sql`).
pub(super) async fn collected_together(
    tx: &Tx<'_>,
    run: &[BlobCollected],
    then: Then<'_>,
) -> Result<()> {
    let blobs = run
        .iter()
        .map(|c| hex_bytes(&c.blake3))
        .collect::<Result<Vec<_>>>()?;
    exec_in_order_then(
        tx,
        &[("DELETE FROM blobs WHERE blake3 = ANY($1)", &[&blobs])],
        then,
    )
    .await
}

pub(super) async fn blob_collected(tx: &Tx<'_>, c: &BlobCollected) -> Result<()> {
    collected_together(tx, std::slice::from_ref(c), None).await
}

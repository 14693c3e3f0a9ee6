//! Stored copies: verification (re-read, re-hash, record what was found) and listing.

use super::Registry;
use crate::domain::Timestamp;
use crate::error::{Error, Result};
use crate::events::{self, DomainEvent, LocationStatus, LocationVerified};
use crate::identity::{ContentAddress, Digest};
use futures::StreamExt;

/// One stored copy of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The blob's BLAKE3 digest.
    pub blake3: Digest,
    /// Backend id.
    pub backend_id: String,
    /// Key within the backend.
    pub key: String,
    /// What is known of the copy.
    pub status: LocationStatus,
    /// The blob's size.
    pub size: u64,
    /// When the copy was written.
    pub stored_at: Timestamp,
    /// When it was last verified.
    pub verified_at: Option<Timestamp>,
}

impl Location {
    /// `blake3:<hex>`.
    pub fn content_address(&self) -> ContentAddress {
        ContentAddress::blake3(self.blake3)
    }

    fn from_row(row: &tokio_postgres::Row) -> Result<Self> {
        Ok(Location {
            blake3: Digest::from_slice(row.get(0)).map_err(|e| Error::Integrity(e.to_string()))?,
            backend_id: row.get(1),
            key: row.get(2),
            status: LocationStatus::parse(row.get(3))?,
            size: row.get::<_, i64>(4) as u64,
            stored_at: Timestamp::from_datetime(row.get(5)),
            verified_at: row
                .get::<_, Option<time::OffsetDateTime>>(6)
                .map(Timestamp::from_datetime),
        })
    }
}

const LOCATION_COLUMNS: &str =
    "l.blake3, l.backend_id, l.key, l.status, b.size, l.stored_at, l.verified_at";

/// Which copies to verify.
#[derive(Debug, Clone)]
pub struct VerifyScope {
    /// Only this backend.
    pub backend: Option<String>,
    /// Fraction of copies to check, chosen at random (1.0: all).
    pub sample: f64,
}

/// A page of copies to verify, and the size of the whole job.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyTotals {
    /// Copies in scope (before sampling).
    pub locations: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What verifying a batch found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOutcome {
    /// Copies re-read and found intact.
    pub ok: u64,
    /// Copies whose bytes differ from their address.
    pub failed: u64,
    /// Copies the backend does not have.
    pub missing: u64,
    /// Copies that could not be checked (backend unreachable, not configured here); nothing
    /// was recorded for them.
    pub errors: u64,
    /// Bytes read.
    pub bytes: u64,
}

impl VerifyOutcome {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: &VerifyOutcome) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.missing += other.missing;
        self.errors += other.errors;
        self.bytes += other.bytes;
    }
}

impl Registry {
    /// How many copies (and bytes) a verification of `scope` covers before sampling.
    pub async fn verify_totals(&self, scope: &VerifyScope) -> Result<VerifyTotals> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), coalesce(sum(b.size), 0)::bigint FROM storage_locations l \
                 JOIN blobs b ON b.blake3 = l.blake3 \
                 WHERE l.status <> 'deleted' AND ($1::text IS NULL OR l.backend_id = $1)",
                &[&scope.backend],
            )
            .await?;
        Ok(VerifyTotals {
            locations: row.get::<_, i64>(0) as u64,
            bytes: row.get::<_, i64>(1) as u64,
        })
    }

    /// The next page of copies to verify after `after` (in digest, backend order), sampled.
    pub async fn locations_to_verify(
        &self,
        scope: &VerifyScope,
        after: Option<&Location>,
        limit: i64,
    ) -> Result<Vec<Location>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {LOCATION_COLUMNS} FROM storage_locations l \
                     JOIN blobs b ON b.blake3 = l.blake3 \
                     WHERE l.status <> 'deleted' AND ($1::text IS NULL OR l.backend_id = $1) \
                       AND ($2::bytea IS NULL OR (l.blake3, l.backend_id) > ($2, $3)) \
                       AND random() < $4 \
                     ORDER BY l.blake3, l.backend_id LIMIT $5"
                ),
                &[
                    &scope.backend,
                    &after.map(|l| l.blake3.0.to_vec()),
                    &after.map(|l| l.backend_id.clone()).unwrap_or_default(),
                    &scope.sample,
                    &limit,
                ],
            )
            .await?;
        rows.iter().map(Location::from_row).collect()
    }

    /// Re-reads each copy, recomputes its BLAKE3 digest, and records one
    /// `v1.storage.location_verified` event per copy checked (in one transaction). Copies whose
    /// backend cannot be read are counted as errors and left as they were.
    pub async fn verify_locations(
        &self,
        locations: &[Location],
        concurrency: usize,
    ) -> Result<VerifyOutcome> {
        // (A vector of futures rather than a mapped stream of references keeps this future
        // `Send`, so it can run on a spawned task.)
        let checks: Vec<_> = locations.iter().map(|l| self.verify_one(l)).collect();
        let results: Vec<Result<LocationVerified>> = futures::stream::iter(checks)
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let mut outcome = VerifyOutcome::default();
        let mut found = Vec::new();
        for (location, result) in locations.iter().zip(results) {
            match result {
                Ok(v) => {
                    match v.status {
                        LocationStatus::Present => outcome.ok += 1,
                        LocationStatus::Missing => outcome.missing += 1,
                        _ => outcome.failed += 1,
                    }
                    outcome.bytes += v.observed_size.unwrap_or(0);
                    if !v.ok {
                        tracing::error!(
                            blob = %location.content_address(),
                            backend = %location.backend_id,
                            status = v.status.as_str(),
                            observed = ?v.observed_blake3,
                            "stored copy failed verification"
                        );
                    }
                    found.push(DomainEvent::new(v));
                }
                Err(e) => {
                    tracing::warn!(
                        blob = %location.content_address(),
                        backend = %location.backend_id,
                        error = %e,
                        "could not verify stored copy"
                    );
                    outcome.errors += 1;
                }
            }
        }
        if !found.is_empty() {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let recorded = events::record(&tx, found).await?;
            events::commit(tx, &recorded, &self.sequencer).await?;
        }
        Ok(outcome)
    }

    async fn verify_one(&self, location: &Location) -> Result<LocationVerified> {
        let backend = self.backends.get(&location.backend_id).ok_or_else(|| {
            Error::storage(
                &location.backend_id,
                "backend is not configured in this process",
            )
        })?;
        let address = location.content_address();
        let verified = |status, observed: Option<(Digest, u64)>| LocationVerified {
            blake3: location.blake3.to_hex(),
            backend_id: location.backend_id.clone(),
            ok: status == LocationStatus::Present,
            status,
            observed_blake3: observed.map(|(d, _)| d.to_hex()),
            observed_size: observed.map(|(_, s)| s),
            verified_at: self.clock.now(),
        };
        let (digest, size) = match backend.read_digest(&address).await {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => return Ok(verified(LocationStatus::Missing, None)),
            Err(e) => return Err(e),
        };
        let status = if digest == location.blake3 && size == location.size {
            LocationStatus::Present
        } else {
            LocationStatus::Failed
        };
        Ok(verified(status, Some((digest, size))))
    }

    /// Copies (optionally in one state, on one backend) in digest order after `after`. With
    /// `owner`, only copies of bytes that tenant's files name, and `stored_at` is when that
    /// tenant first stored them: when another tenant stored the same bytes is not its to learn.
    pub async fn list_locations(
        &self,
        status: Option<LocationStatus>,
        backend: Option<&str>,
        owner: Option<&crate::domain::TenantId>,
        after: Option<(Digest, String)>,
        limit: i64,
    ) -> Result<Vec<Location>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT l.blake3, l.backend_id, l.key, l.status, b.size, \
                        CASE WHEN $6::text IS NULL THEN l.stored_at ELSE \
                          (SELECT min(f.created_at) FROM files f \
                           WHERE f.tenant = $6 AND f.blake3 = l.blake3) END, \
                        l.verified_at \
                 FROM storage_locations l \
                 JOIN blobs b ON b.blake3 = l.blake3 \
                 WHERE ($1::text IS NULL OR l.status = $1) \
                   AND ($2::text IS NULL OR l.backend_id = $2) \
                   AND ($3::bytea IS NULL OR (l.blake3, l.backend_id) > ($3, $4)) \
                   AND ($6::text IS NULL OR EXISTS \
                        (SELECT 1 FROM files f WHERE f.tenant = $6 AND f.blake3 = l.blake3)) \
                 ORDER BY l.blake3, l.backend_id LIMIT $5",
                &[
                    &status.map(LocationStatus::as_str),
                    &backend,
                    &after.as_ref().map(|(d, _)| d.0.to_vec()),
                    &after.map(|(_, b)| b).unwrap_or_default(),
                    &limit,
                    &owner.map(|t| t.as_str()),
                ],
            )
            .await?;
        rows.iter().map(Location::from_row).collect()
    }

    /// How many copies are known to be damaged (`failed`) or lost (`missing`).
    pub async fn unhealthy_location_counts(&self) -> Result<(u64, u64)> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'failed'), \
                        count(*) FILTER (WHERE status = 'missing') \
                 FROM storage_locations WHERE status IN ('failed', 'missing')",
                &[],
            )
            .await?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }
}

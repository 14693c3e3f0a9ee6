//! Dedup without re-sending bytes: which addresses a tenant lacks, and linking held bytes into
//! a package. Only the caller's own files count, so nothing reveals what other tenants store.

use super::Registry;
use super::ingest::{DEFAULT_MEDIA_TYPE, check_can_add, validate_media_type};
use super::types::FileRecord;
use crate::error::{Error, Result};
use crate::events::FileIngested;
use crate::identity::{Algorithm, ContentAddress, Digest};
use crate::model::{FileId, PackageId, RelativePath, TenantId};
use std::collections::HashSet;

/// Most addresses one `missing_blobs` call may ask about.
pub const MAX_MISSING_QUERY: usize = 1000;

impl Registry {
    /// The subset of `addresses` the tenant does not hold (in request order, duplicates kept
    /// once). Held means: one of the tenant's files names these bytes and a backend has them.
    pub async fn missing_blobs(
        &self,
        tenant: &TenantId,
        addresses: &[ContentAddress],
    ) -> Result<Vec<ContentAddress>> {
        if addresses.len() > MAX_MISSING_QUERY {
            return Err(Error::InvalidInput(format!(
                "at most {MAX_MISSING_QUERY} content addresses per request"
            )));
        }
        let by_algorithm = |a: Algorithm| -> Vec<Vec<u8>> {
            addresses
                .iter()
                .filter(|x| x.algorithm() == a)
                .map(|x| x.digest().0.to_vec())
                .collect()
        };
        let blake3 = by_algorithm(Algorithm::Blake3);
        let sha256 = by_algorithm(Algorithm::Sha256);
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT b.blake3, b.sha256 FROM blobs b \
                 WHERE (b.blake3 = ANY($2) OR b.sha256 = ANY($3)) \
                   AND EXISTS (SELECT 1 FROM files f WHERE f.tenant = $1 AND f.blake3 = b.blake3) \
                   AND EXISTS (SELECT 1 FROM storage_locations l \
                               WHERE l.blake3 = b.blake3 AND l.status = 'present')",
                &[&tenant.as_str(), &blake3, &sha256],
            )
            .await?;
        let mut held = HashSet::new();
        for row in rows {
            let b: &[u8] = row.get(0);
            let s: &[u8] = row.get(1);
            held.insert(ContentAddress::blake3(digest(b)?));
            held.insert(ContentAddress::sha256(digest(s)?));
        }
        let mut seen = HashSet::new();
        Ok(addresses
            .iter()
            .filter(|a| !held.contains(a) && seen.insert(**a))
            .copied()
            .collect())
    }

    /// Adds a file to an open package from bytes the tenant already holds. Unknown (or
    /// another tenant's) bytes are `NotFound`.
    pub async fn link_file(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        relative_path: RelativePath,
        address: ContentAddress,
        media_type: Option<String>,
        replace: bool,
    ) -> Result<FileRecord> {
        let media_type = media_type.unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
        validate_media_type(&media_type)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let request = super::IngestRequest {
            relative_path: relative_path.clone(),
            media_type: Some(media_type.clone()),
            expected_digest: None,
            replace,
        };
        let replaced = check_can_add(
            &*tx,
            tenant,
            package_id,
            &request,
            self.limits.max_files_per_package,
            true,
        )
        .await?
        .replaced;
        let column = match address.algorithm() {
            Algorithm::Blake3 => "b.blake3",
            Algorithm::Sha256 => "b.sha256",
        };
        // Take the blob's collection lock (shared) before looking it up, so a concurrent
        // garbage collection cannot remove it under us (see gc.rs).
        let blake3_of_address: Option<Vec<u8>> = match address.algorithm() {
            Algorithm::Blake3 => Some(address.digest().0.to_vec()),
            Algorithm::Sha256 => tx
                .query_opt(
                    "SELECT blake3 FROM blobs WHERE sha256 = $1 LIMIT 1",
                    &[&address.digest().0.as_slice()],
                )
                .await?
                .map(|r| r.get(0)),
        };
        if let Some(b) = &blake3_of_address {
            super::gc::lock_blob_shared(&tx, &digest(b)?).await?;
        }
        let row = tx
            .query_opt(
                &format!(
                    "SELECT b.blake3, b.sha256, b.size, l.backend_id, l.key FROM blobs b \
                     JOIN storage_locations l ON l.blake3 = b.blake3 AND l.status = 'present' \
                     WHERE {column} = $2 \
                       AND EXISTS (SELECT 1 FROM files f WHERE f.tenant = $1 AND f.blake3 = b.blake3) \
                     ORDER BY l.backend_id LIMIT 1 FOR SHARE OF b"
                ),
                &[&tenant.as_str(), &address.digest().0.as_slice()],
            )
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("content {address} (this tenant holds no such bytes; upload them)"),
            })?;
        let blake3 = digest(row.get(0))?;
        let sha256 = digest(row.get(1))?;
        let size = row.get::<_, i64>(2) as u64;
        let event = FileIngested {
            file_id: FileId::generate(),
            package_id,
            relative_path,
            size,
            media_type,
            blake3: blake3.to_hex(),
            sha256: sha256.to_hex(),
            backend_id: row.get(3),
            storage_key: row.get(4),
            replaced_file_id: replaced,
            ingested_at: self.clock.now(),
        };
        super::ingest::commit_file_event(tx, tenant, event, blake3, sha256).await
    }
}

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::from_slice(bytes).map_err(|e| Error::Integrity(e.to_string()))
}

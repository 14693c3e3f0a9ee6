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
        let link = LinkRequest {
            relative_path,
            content_address: address,
            media_type,
            replace,
        };
        let mut records = self.link(tenant, package_id, vec![link], |_, e| e).await?;
        records
            .pop()
            .ok_or_else(|| Error::Integrity("a link made no file".into()))
    }

    /// Adds up to [`MAX_LINK_BATCH`] files from held bytes in one transaction: all of them, or
    /// (on the first link that cannot be made, named in the error) none.
    pub async fn link_files(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        links: Vec<LinkRequest>,
    ) -> Result<Vec<FileRecord>> {
        if links.is_empty() || links.len() > MAX_LINK_BATCH {
            return Err(Error::InvalidInput(format!(
                "give from 1 to {MAX_LINK_BATCH} links per request, not {}",
                links.len()
            )));
        }
        let mut paths = HashSet::new();
        for (i, link) in links.iter().enumerate() {
            if !paths.insert(link.relative_path.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "links[{i}]: `{}` appears more than once in this request",
                    link.relative_path
                )));
            }
        }
        let paths: Vec<String> = links
            .iter()
            .map(|l| l.relative_path.as_str().to_owned())
            .collect();
        self.link(tenant, package_id, links, |i, e| in_link(i, &paths[i], e))
            .await
    }

    async fn link(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        links: Vec<LinkRequest>,
        context: impl Fn(usize, Error) -> Error,
    ) -> Result<Vec<FileRecord>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (mut events, mut records) = (Vec::new(), Vec::new());
        let mut added = 0u64;
        let max_files = self.limits.max_files_per_package;
        for (i, link) in links.into_iter().enumerate() {
            let media_type = link.media_type.unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
            let (event, record) = async {
                validate_media_type(&media_type)?;
                let request = super::IngestRequest {
                    relative_path: link.relative_path.clone(),
                    media_type: Some(media_type.clone()),
                    expected_digest: None,
                    replace: link.replace,
                };
                let can =
                    check_can_add(&*tx, tenant, package_id, &request, max_files, true).await?;
                if can.replaced.is_none() {
                    added += 1;
                    if can.file_count + added > max_files {
                        return Err(Error::QuotaExceeded(format!(
                            "package {package_id} would hold more than the maximum of \
                             {max_files} files"
                        )));
                    }
                }
                let held = held_blob(&tx, tenant, &link.content_address).await?;
                let event = FileIngested {
                    file_id: FileId::generate(),
                    package_id,
                    relative_path: link.relative_path,
                    size: held.size,
                    media_type,
                    blake3: held.blake3.to_hex(),
                    sha256: held.sha256.to_hex(),
                    backend_id: held.backend_id,
                    storage_key: held.key,
                    replaced_file_id: can.replaced,
                    ingested_at: self.clock.now(),
                };
                let record = super::ingest::file_record(&event, held.blake3, held.sha256);
                Ok((event, record))
            }
            .await
            .map_err(|e| context(i, e))?;
            events.push(crate::events::DomainEvent::FileIngested {
                tenant: tenant.clone(),
                event,
            });
            records.push(record);
        }
        crate::events::record(&tx, events).await?;
        tx.commit().await?;
        Ok(records)
    }
}

/// One file of [`Registry::link_files`].
#[derive(Debug, Clone)]
pub struct LinkRequest {
    /// Where in the package.
    pub relative_path: RelativePath,
    /// Bytes the tenant holds.
    pub content_address: ContentAddress,
    /// Default `application/octet-stream`.
    pub media_type: Option<String>,
    /// Replace a file already at that path.
    pub replace: bool,
}

/// Most links one [`Registry::link_files`] call may make.
pub const MAX_LINK_BATCH: usize = 1000;

/// A stored copy of bytes the tenant holds.
struct HeldBlob {
    blake3: Digest,
    sha256: Digest,
    size: u64,
    backend_id: String,
    key: String,
}

/// Finds bytes `tenant` holds, taking the blob's collection lock (shared) before looking, so a
/// concurrent garbage collection cannot remove them under us (see gc.rs).
async fn held_blob(
    tx: &crate::events::Tx<'_>,
    tenant: &TenantId,
    address: &ContentAddress,
) -> Result<HeldBlob> {
    let column = match address.algorithm() {
        Algorithm::Blake3 => "b.blake3",
        Algorithm::Sha256 => "b.sha256",
    };
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
        super::gc::lock_blob_shared(tx, &digest(b)?).await?;
    }
    let sql = format!(
        "SELECT b.blake3, b.sha256, b.size, l.backend_id, l.key FROM blobs b \
         JOIN storage_locations l ON l.blake3 = b.blake3 AND l.status = 'present' \
         WHERE {column} = $2 \
           AND EXISTS (SELECT 1 FROM files f WHERE f.tenant = $1 AND f.blake3 = b.blake3) \
         ORDER BY l.backend_id LIMIT 1 FOR SHARE OF b"
    );
    let statement = tx.prepare_cached(&sql).await?;
    let row = tx
        .query_opt(
            &statement,
            &[&tenant.as_str(), &address.digest().0.as_slice()],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("content {address} (this tenant holds no such bytes; upload them)"),
        })?;
    Ok(HeldBlob {
        blake3: digest(row.get(0))?,
        sha256: digest(row.get(1))?,
        size: row.get::<_, i64>(2) as u64,
        backend_id: row.get(3),
        key: row.get(4),
    })
}

/// Names the link an error is about.
fn in_link(i: usize, path: &str, e: Error) -> Error {
    let say = |m: String| format!("links[{i}] (`{path}`): {m}");
    match e {
        Error::NotFound { what } => Error::NotFound { what: say(what) },
        Error::Conflict(m) => Error::Conflict(say(m)),
        Error::InvalidInput(m) => Error::InvalidInput(say(m)),
        Error::QuotaExceeded(m) => Error::QuotaExceeded(say(m)),
        Error::Gone(m) => Error::Gone(say(m)),
        other => other,
    }
}

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::from_slice(bytes).map_err(|e| Error::Integrity(e.to_string()))
}

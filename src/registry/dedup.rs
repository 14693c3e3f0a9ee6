//! Dedup without re-sending bytes: which addresses a tenant lacks, and linking held bytes into
//! a package. Only the caller's own files count, so nothing reveals what other tenants store.

use super::Registry;
use super::admission::{check_open, held, holds, path_taken};
use super::ingest::{DEFAULT_MEDIA_TYPE, validate_media_type};
use super::types::FileRecord;
use crate::domain::{FileId, PackageId, RelativePath, TenantId};
use crate::error::{Error, Result};
use crate::events::FileIngested;
use crate::identity::{Algorithm, ContentAddress, Digest};
use std::collections::{HashMap, HashSet};

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
        let mut records = linked(self.link(tenant, package_id, vec![link], |_, e| e).await)?;
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
        linked(self.link_files_uncounted(tenant, package_id, links).await)
    }

    async fn link_files_uncounted(
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

    /// Links in one transaction, with a fixed number of statements whatever their number:
    /// the package (locked), the paths taken, the addresses' blobs (collection locks taken
    /// shared, see gc.rs), then the events. `context` names the link an error is about.
    async fn link(
        &self,
        tenant: &TenantId,
        package_id: PackageId,
        links: Vec<LinkRequest>,
        context: impl Fn(usize, Error) -> Error,
    ) -> Result<Vec<FileRecord>> {
        for (i, link) in links.iter().enumerate() {
            if let Some(media_type) = &link.media_type {
                validate_media_type(media_type).map_err(|e| context(i, e))?;
            }
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let open = check_open(&tx, tenant, package_id, true).await?;
        let paths: Vec<&str> = links.iter().map(|l| l.relative_path.as_str()).collect();
        let taken: HashMap<String, FileId> = tx
            .query(
                "SELECT relative_path, id FROM files \
                 WHERE package_id = $1 AND relative_path = ANY($2)",
                &[&package_id.0, &paths],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), FileId(r.get(1))))
            .collect();
        if let Some(i) = links
            .iter()
            .position(|l| l.replace && taken.contains_key(l.relative_path.as_str()))
            && let Some(reason) = holds(&tx, &[package_id.0]).await?.remove(&package_id.0)
        {
            let path = &links[i].relative_path;
            return Err(context(i, held(package_id, path, &reason)));
        }
        links_fit(
            package_id,
            &links,
            &taken,
            open.file_count,
            self.limits.max_files_per_package,
            &context,
        )?;
        let held = held_blobs(&tx, tenant, links.iter().map(|l| &l.content_address)).await?;
        let mut events = Vec::with_capacity(links.len());
        let mut records = Vec::with_capacity(links.len());
        for (i, link) in links.into_iter().enumerate() {
            let blob = held
                .get(&link.content_address)
                .ok_or_else(|| Error::NotFound {
                    what: format!(
                        "content {} (this tenant holds no such bytes; upload them)",
                        link.content_address
                    ),
                })
                .map_err(|e| context(i, e))?;
            let event = FileIngested {
                file_id: FileId::generate(),
                package_id,
                replaced_file_id: taken.get(link.relative_path.as_str()).copied(),
                relative_path: link.relative_path,
                size: blob.size,
                media_type: link.media_type.unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into()),
                blake3: blob.blake3.to_hex(),
                sha256: blob.sha256.to_hex(),
                backend_id: blob.backend_id.clone(),
                storage_key: blob.key.clone(),
                ingested_at: self.clock.now(),
            };
            records.push(super::record::file_record(&event, blob.blake3, blob.sha256));
            events.push(crate::events::DomainEvent::of(tenant, event));
        }
        let added = super::quota::Added {
            tenant: tenant.clone(),
            bytes: records.iter().map(|r| r.size).sum(),
            packages: 0,
            files: records
                .iter()
                .map(|r| (r.package_id.0, r.relative_path.as_str().to_owned()))
                .collect(),
        };
        let recorded = crate::events::record(&tx, events).await?;
        super::quota::enforce(&tx, &[added], self.clock.now()).await?;
        crate::events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(records)
    }
}

/// Counts links (see [`INGESTS`](crate::metrics::INGESTS)): each file made is a
/// deduplicated ingest; a refusal is one refused ingest.
fn linked(result: Result<Vec<FileRecord>>) -> Result<Vec<FileRecord>> {
    match &result {
        Ok(records) => {
            for r in records {
                crate::metrics::ingest(crate::metrics::IngestOutcome::Deduplicated, r.size);
            }
        }
        Err(e) => crate::metrics::ingest_error(e),
    }
    result
}

/// Whether `links` may go into a package holding `file_count` files, `taken` of their paths
/// already used: each taken path only as a replacement, and the new paths within the limit.
/// All or nothing: the first link that may not names itself through `context`.
fn links_fit(
    package_id: PackageId,
    links: &[LinkRequest],
    taken: &HashMap<String, FileId>,
    file_count: u64,
    max_files: u64,
    context: &impl Fn(usize, Error) -> Error,
) -> Result<()> {
    let mut added = 0u64;
    for (i, link) in links.iter().enumerate() {
        match taken.get(link.relative_path.as_str()) {
            Some(_) if !link.replace => {
                return Err(context(i, path_taken(package_id, &link.relative_path)));
            }
            Some(_) => {}
            None => added += 1,
        }
    }
    if file_count + added > max_files {
        return Err(Error::LimitExceeded(format!(
            "package {package_id} holds {file_count} files; {added} more would pass the \
             maximum of {max_files}"
        )));
    }
    Ok(())
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

/// The bytes `tenant` holds among `addresses` (by either digest), one stored copy each. Takes
/// each blob's collection lock (shared) before looking, so a concurrent garbage collection
/// cannot remove them under us (see gc.rs).
async fn held_blobs<'a>(
    tx: &crate::db::Tx<'_>,
    tenant: &TenantId,
    addresses: impl Iterator<Item = &'a ContentAddress>,
) -> Result<HashMap<ContentAddress, HeldBlob>> {
    let (mut blake3, mut sha256) = (Vec::new(), Vec::new());
    for a in addresses {
        match a.algorithm() {
            Algorithm::Blake3 => blake3.push(a.digest().0.to_vec()),
            Algorithm::Sha256 => sha256.push(a.digest().0.to_vec()),
        }
    }
    if !sha256.is_empty() {
        let rows = tx
            .query(
                "SELECT blake3 FROM blobs WHERE sha256 = ANY($1)",
                &[&sha256],
            )
            .await?;
        blake3.extend(rows.into_iter().map(|r| r.get::<_, Vec<u8>>(0)));
    }
    blake3.sort();
    blake3.dedup();
    let digests = blake3
        .iter()
        .map(|b| digest(b))
        .collect::<Result<Vec<_>>>()?;
    super::blob_lock::lock_blobs_shared(tx, &digests).await?;
    let rows = tx
        .query(
            "SELECT b.blake3, b.sha256, b.size, l.backend_id, l.key FROM blobs b \
             JOIN storage_locations l ON l.blake3 = b.blake3 AND l.status = 'present' \
             WHERE b.blake3 = ANY($2) \
               AND EXISTS (SELECT 1 FROM files f WHERE f.tenant = $1 AND f.blake3 = b.blake3) \
             ORDER BY b.blake3, l.backend_id FOR SHARE OF b",
            &[&tenant.as_str(), &blake3],
        )
        .await?;
    let mut held = HashMap::new();
    for row in rows {
        let blob = HeldBlob {
            blake3: digest(row.get(0))?,
            sha256: digest(row.get(1))?,
            size: row.get::<_, i64>(2) as u64,
            backend_id: row.get(3),
            key: row.get(4),
        };
        // The first copy (by backend id) of each blob; reachable by either address.
        let by_blake3 = ContentAddress::blake3(blob.blake3);
        if held.contains_key(&by_blake3) {
            continue;
        }
        let by_sha256 = ContentAddress::sha256(blob.sha256);
        held.insert(
            by_sha256,
            HeldBlob {
                backend_id: blob.backend_id.clone(),
                key: blob.key.clone(),
                ..blob
            },
        );
        held.insert(by_blake3, blob);
    }
    Ok(held)
}

/// Names the link an error is about.
fn in_link(i: usize, path: &str, e: Error) -> Error {
    let say = |m: String| format!("links[{i}] (`{path}`): {m}");
    match e {
        Error::NotFound { what } => Error::NotFound { what: say(what) },
        Error::Conflict(m) => Error::Conflict(say(m)),
        Error::InvalidInput(m) => Error::InvalidInput(say(m)),
        Error::LimitExceeded(m) => Error::LimitExceeded(say(m)),
        Error::Gone(m) => Error::Gone(say(m)),
        other => other,
    }
}

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::from_slice(bytes).map_err(|e| Error::Integrity(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DualHasher;

    fn link(path: &str, replace: bool) -> LinkRequest {
        LinkRequest {
            relative_path: RelativePath::new(path).unwrap(),
            content_address: DualHasher::digest(path.as_bytes()).primary_address(),
            media_type: None,
            replace,
        }
    }

    #[test]
    fn links_fit_only_as_replacements_of_taken_paths_and_within_the_limit() {
        let package = PackageId::generate();
        let taken: HashMap<String, FileId> = [("a".to_owned(), FileId::generate())].into();
        let name = |i: usize, e: Error| Error::InvalidInput(format!("link {i}: {e}"));
        // A taken path without `replace` is refused, naming the link.
        let err = links_fit(
            package,
            &[link("b", false), link("a", false)],
            &taken,
            1,
            10,
            &name,
        )
        .unwrap_err();
        assert!(err.to_string().contains("link 1"), "{err}");
        // As a replacement it adds nothing to the count.
        assert!(links_fit(package, &[link("a", true)], &taken, 10, 10, &name).is_ok());
        // New paths must fit: 9 held + 2 new > 10.
        let err = links_fit(
            package,
            &[link("b", false), link("c", false)],
            &taken,
            9,
            10,
            &name,
        )
        .unwrap_err();
        assert!(matches!(err, Error::LimitExceeded(_)), "{err}");
        assert!(links_fit(package, &[link("b", false)], &taken, 9, 10, &name).is_ok());
    }
}

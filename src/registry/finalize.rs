//! Finalizing: the package becomes immutable and gets its manifest.

use super::Registry;
use super::packages::load_package;
use super::types::{FILE_COLUMNS, FileRecord, Package, PackageStatus, StoredManifest};
use crate::domain::{PackageId, TenantId, Timestamp};
use crate::error::{Error, Result};
use crate::events::{self, DomainEvent, PackageFinalized};
use crate::identity::{ContentAddress, Digest};
use crate::manifest::{
    FileDigests, MANIFEST_VERSION, Manifest, ManifestFile, ManifestPackage, Provenance,
    RetentionSummary, StorageReceipt, SuppliedProvenance,
};

/// `artifactstore/<version>`, recorded in every manifest's provenance.
pub const GENERATOR: &str = concat!("artifactstore/", env!("CARGO_PKG_VERSION"));

/// What a package's manifest is built from, as read in the finalizing transaction.
struct ManifestFacts {
    package: Package,
    /// Its files, by path.
    files: Vec<FileRecord>,
    /// Where its bytes are, sorted.
    storage_receipts: Vec<StorageReceipt>,
    /// Its class's duration (`None`: forever).
    duration_seconds: Option<i64>,
    legal_hold: bool,
}

/// The manifest of a package finalized at `finalized_at`: a pure function of the facts.
fn build_manifest(
    facts: ManifestFacts,
    finalized_at: Timestamp,
    finalized_by: Option<String>,
    supplied: Option<SuppliedProvenance>,
) -> Result<Manifest> {
    let ManifestFacts {
        package,
        files,
        storage_receipts,
        duration_seconds,
        legal_hold,
    } = facts;
    let expires_at = match duration_seconds {
        Some(seconds) => Some(finalized_at.plus_seconds(seconds).ok_or_else(|| {
            Error::InvalidInput(format!("retention of {seconds} s overflows the calendar"))
        })?),
        None => None,
    };
    Ok(Manifest {
        manifest_version: MANIFEST_VERSION,
        package: ManifestPackage {
            id: package.id,
            tenant: package.tenant.clone(),
            producer: package.producer,
            subject: package.subject,
            retention_class: package.retention_class.clone(),
            metadata: package.metadata,
            created_at: package.created_at,
            finalized_at,
        },
        files: files
            .iter()
            .map(|f| ManifestFile {
                relative_path: f.relative_path.clone(),
                size: f.size,
                media_type: f.media_type.clone(),
                digests: FileDigests::new(&f.blake3, &f.sha256),
            })
            .collect(),
        storage_receipts,
        retention_summary: RetentionSummary {
            class: package.retention_class,
            duration_seconds: duration_seconds.map(|d| d as u64),
            expires_at,
            legal_hold,
        },
        provenance: Provenance {
            generator: GENERATOR.into(),
            finalized_by,
            supplied,
        },
    })
}

impl Registry {
    /// Finalizes an open package: builds its manifest and records one `v1.package.finalized`
    /// event whose payload is the manifest's canonical CBOR. Finalizing twice is a conflict.
    pub async fn finalize_package(
        &self,
        tenant: &TenantId,
        id: PackageId,
        finalized_by: Option<String>,
    ) -> Result<Package> {
        self.finalize_package_with(tenant, id, finalized_by, None)
            .await
    }

    /// [`Self::finalize_package`], recording the provenance its producer `supplied` in the
    /// manifest (and so in its attestation).
    pub async fn finalize_package_with(
        &self,
        tenant: &TenantId,
        id: PackageId,
        finalized_by: Option<String>,
        supplied: Option<SuppliedProvenance>,
    ) -> Result<Package> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let facts = manifest_facts(&tx, tenant, id).await?;
        let manifest = build_manifest(facts, self.clock.now(), finalized_by, supplied)?;
        let cbor = manifest.to_cbor()?;
        if let Some(key) = &self.signer {
            attest(&tx, key, &manifest, &cbor).await?;
        }
        let recorded = events::record(
            &tx,
            vec![DomainEvent::new(PackageFinalized {
                manifest: Box::new(manifest),
                cbor,
            })],
        )
        .await?;
        let package = load_package(&*tx, tenant, id).await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(package)
    }

    /// A finalized package's signed attestation (a DSSE envelope, JSON): kept with its
    /// manifest, a withdrawn package's too. `NotFound` for an open package, or one finalized
    /// by a process without a signing key.
    pub async fn get_attestation(&self, tenant: &TenantId, id: PackageId) -> Result<Vec<u8>> {
        let client = self.pool.get().await?;
        let package = load_package(&**client, tenant, id).await?;
        let row = client
            .query_opt(
                "SELECT envelope FROM package_attestations WHERE package_id = $1",
                &[&id.0],
            )
            .await?;
        match row {
            Some(row) => Ok(row.get(0)),
            None if package.status == PackageStatus::Open => Err(Error::NotFound {
                what: format!("attestation of package {id} (still open: finalize it first)"),
            }),
            None if package.status.is_gone() && package.manifest_digest.is_none() => {
                Err(super::packages::gone(&package))
            }
            None => Err(Error::NotFound {
                what: format!(
                    "attestation of package {id} (finalized by a process without a signing key)"
                ),
            }),
        }
    }

    /// The manifest of a finalized package.
    pub async fn get_manifest(&self, tenant: &TenantId, id: PackageId) -> Result<StoredManifest> {
        let client = self.pool.get().await?;
        let package = load_package(&**client, tenant, id).await?;
        let row = client
            .query_opt(
                "SELECT digest, cbor FROM manifests WHERE package_id = $1",
                &[&id.0],
            )
            .await?;
        match row {
            Some(row) => Ok(StoredManifest {
                digest: row
                    .get::<_, &str>(0)
                    .parse()
                    .map_err(|e| Error::Integrity(format!("manifest digest: {e}")))?,
                cbor: row.get(1),
            }),
            None if package.status.is_gone() => Err(super::packages::gone(&package)),
            None if package.status == PackageStatus::Open => Err(Error::NotFound {
                what: format!(
                    "manifest of package {id} (the package is still open: finalize it first)"
                ),
            }),
            None => Err(Error::Integrity(format!(
                "finalized package {id} has no manifest"
            ))),
        }
    }
}

/// Locks the package (it must be the tenant's, live and open) and reads what its manifest is
/// built from.
async fn manifest_facts(
    tx: &crate::db::Tx<'_>,
    tenant: &TenantId,
    id: PackageId,
) -> Result<ManifestFacts> {
    let locked = tx
        .query_opt(
            "SELECT 1 FROM packages WHERE id = $1 AND tenant = $2 FOR UPDATE",
            &[&id.0, &tenant.as_str()],
        )
        .await?;
    if locked.is_none() {
        return Err(Error::not_found("package", id));
    }
    let package = super::packages::live(load_package(&**tx, tenant, id).await?)?;
    if package.status == PackageStatus::Finalized {
        return Err(Error::Conflict(format!(
            "package {id} is already finalized"
        )));
    }
    let rows = tx
        .query(
            &format!(
                "SELECT {FILE_COLUMNS} FROM files f JOIN blobs b ON b.blake3 = f.blake3 \
                 WHERE f.package_id = $1"
            ),
            &[&id.0],
        )
        .await?;
    let mut files = rows
        .iter()
        .map(FileRecord::from_row)
        .collect::<Result<Vec<_>>>()?;
    files.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));

    // A receipt's time is when this tenant first stored the bytes, never the copy's own
    // time: with deduplication that may be another tenant's upload, not this one's to learn.
    let receipt_rows = tx
        .query(
            "SELECT l.blake3, l.backend_id, \
                    (SELECT min(t.created_at) FROM files t \
                     WHERE t.tenant = $2 AND t.blake3 = l.blake3) \
             FROM storage_locations l \
             WHERE l.status = 'present' \
               AND l.blake3 IN (SELECT f.blake3 FROM files f WHERE f.package_id = $1)",
            &[&id.0, &tenant.as_str()],
        )
        .await?;
    let mut storage_receipts = receipt_rows
        .iter()
        .map(|r| {
            let digest = Digest::from_slice(r.get::<_, &[u8]>(0))
                .map_err(|e| Error::Integrity(e.to_string()))?;
            Ok(StorageReceipt {
                content_address: ContentAddress::blake3(digest),
                backend_id: r.get(1),
                stored_at: Timestamp::from_datetime(r.get(2)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    storage_receipts.sort_by(|a, b| {
        (a.content_address.to_string(), &a.backend_id)
            .cmp(&(b.content_address.to_string(), &b.backend_id))
    });

    let retention = tx
        .query_one(
            "SELECT c.duration_seconds, s.legal_hold FROM retention_classes c, retention_state s \
             WHERE c.name = $1 AND s.package_id = $2",
            &[&package.retention_class, &id.0],
        )
        .await?;
    Ok(ManifestFacts {
        package,
        files,
        storage_receipts,
        duration_seconds: retention.get(0),
        legal_hold: retention.get(1),
    })
}

/// Signs the attestation of the package `manifest` describes and keeps it, in the finalizing
/// transaction: what is attested is what was finalized.
async fn attest(
    tx: &crate::db::Tx<'_>,
    key: &crate::signing::SigningKey,
    manifest: &Manifest,
    cbor: &[u8],
) -> Result<()> {
    let statement = crate::manifest::attestation::statement(manifest, cbor)?;
    let envelope =
        crate::manifest::attestation::envelope(&statement, key.id(), |bytes| key.sign(bytes));
    let statement = tx
        .prepare_cached(
            "INSERT INTO package_attestations (package_id, key_id, envelope, made_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &manifest.package.id.0,
            &key.id(),
            &envelope,
            &manifest.package.finalized_at.as_datetime(),
        ],
    )
    .await?;
    Ok(())
}

//! Request and response bodies. Field names are a contract: clients are generated from them.

use super::text::{Opt, Text};
use crate::registry::{FileRecord, Package as RegistryPackage, PackageStatus};
use poem_openapi::Object;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// A package.
#[derive(Debug, Clone, Object)]
pub struct Package {
    /// Id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// What produced it.
    pub producer: String,
    /// What it is about.
    pub subject: String,
    /// Retention class.
    pub retention_class: String,
    /// Text labels.
    pub metadata: BTreeMap<String, String>,
    // No doc comment here: poem-openapi would wrap the `$ref` in an `allOf` with the
    // description, which generated clients (openapi-python-client) cannot take for enums.
    // The `Status` schema (`PackageStatus`) carries the documentation.
    pub status: PackageStatus,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was finalized.
    #[oai(skip_serializing_if_is_none)]
    pub finalized_at: Option<OffsetDateTime>,
    /// `blake3:<hex>` of the manifest's canonical CBOR, once finalized.
    #[oai(skip_serializing_if_is_none)]
    pub manifest_digest: Option<String>,
    /// Number of files.
    pub file_count: u64,
    /// Sum of file sizes in bytes.
    pub total_size: u64,
    /// Expiry and legal hold.
    pub retention: Retention,
    /// The files, sorted by relative path (only on `GET /packages/{id}`).
    #[oai(skip_serializing_if_is_none)]
    pub files: Option<Vec<FileInfo>>,
    // See `status`: the `Removal` schema carries the documentation.
    #[oai(skip_serializing_if_is_none)]
    pub removal: Option<Removal>,
}

/// Who abandoned or withdrew a package (`DELETE /packages/{id}`), when and why.
#[derive(Debug, Clone, Object)]
pub struct Removal {
    /// The name of the token that removed it.
    pub by: String,
    /// When.
    pub at: OffsetDateTime,
    /// Why, if the request said.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
}

/// A package's retention.
#[derive(Debug, Clone, Object)]
pub struct Retention {
    /// Retention class.
    pub class: String,
    /// When the package expires; absent: never, or (open packages) not before it is
    /// finalized, unless it stays open past the open-package grace.
    #[oai(skip_serializing_if_is_none)]
    pub expires_at: Option<OffsetDateTime>,
    /// Whether a legal hold keeps it (a held package never expires).
    pub legal_hold: bool,
    /// Why it is held.
    #[oai(skip_serializing_if_is_none)]
    pub hold_reason: Option<String>,
}

impl From<RegistryPackage> for Package {
    fn from(p: RegistryPackage) -> Self {
        Package {
            id: p.id.0,
            tenant: p.tenant.to_string(),
            producer: p.producer,
            subject: p.subject,
            retention_class: p.retention_class.clone(),
            metadata: p.metadata.entries().clone(),
            status: p.status,
            created_at: p.created_at.as_datetime(),
            finalized_at: p.finalized_at.map(|t| t.as_datetime()),
            manifest_digest: p.manifest_digest.map(|d| d.to_string()),
            file_count: p.file_count,
            total_size: p.total_size,
            retention: Retention {
                class: p.retention_class,
                expires_at: p.retention.expires_at.map(|t| t.as_datetime()),
                legal_hold: p.retention.legal_hold,
                hold_reason: p.retention.hold_reason,
            },
            files: None,
            removal: p.removal.map(|r| Removal {
                by: r.by,
                at: r.at.as_datetime(),
                reason: r.reason,
            }),
        }
    }
}

/// Both digests, bare lowercase hex.
#[derive(Debug, Clone, Object)]
pub struct Digests {
    /// BLAKE3-256, 64 lowercase hex characters.
    pub blake3: String,
    /// SHA-256, 64 lowercase hex characters.
    pub sha256: String,
}

/// A file in a package.
#[derive(Debug, Clone, Object)]
pub struct FileInfo {
    /// Id.
    pub id: Uuid,
    /// Package it belongs to.
    pub package_id: Uuid,
    /// Path inside the package.
    pub relative_path: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Both digests.
    pub digests: Digests,
    /// `blake3:<hex>`, the address the bytes are stored under.
    pub content_address: String,
    /// When it was added.
    pub created_at: OffsetDateTime,
}

impl From<FileRecord> for FileInfo {
    fn from(f: FileRecord) -> Self {
        FileInfo {
            id: f.id.0,
            package_id: f.package_id.0,
            content_address: f.content_address().to_string(),
            relative_path: f.relative_path.to_string(),
            size: f.size,
            media_type: f.media_type,
            digests: Digests {
                blake3: f.blake3.to_hex(),
                sha256: f.sha256.to_hex(),
            },
            created_at: f.created_at.as_datetime(),
        }
    }
}

/// `POST /packages` body.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct CreatePackage {
    /// What produced it (1-256 bytes).
    #[oai(validator(min_length = 1, max_length = 256))]
    pub producer: Text,
    /// What it is about (1-256 bytes).
    #[oai(validator(min_length = 1, max_length = 256))]
    pub subject: Text,
    /// Retention class; `standard` when absent.
    #[oai(
        skip_serializing_if_is_none,
        validator(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")
    )]
    pub retention_class: Opt<Text>,
    /// Text labels: keys `[A-Za-z0-9._:/-]{1,128}`, values up to 4 KiB, at most 64 entries.
    #[oai(skip_serializing_if_is_none)]
    pub metadata: Opt<BTreeMap<String, Text>>,
}

/// A page of packages, newest first.
#[derive(Debug, Clone, Object)]
pub struct PackageList {
    /// The packages.
    pub items: Vec<Package>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// `POST /blobs/missing` body.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct MissingBlobsRequest {
    /// Content addresses (`blake3:<hex>` or `sha256:<hex>`), at most 1000.
    #[oai(validator(max_items = 1000, pattern = r"^(blake3|sha256):[0-9a-f]{64}$"))]
    pub content_addresses: Vec<Text>,
}

/// Which addresses the caller's tenant does not hold.
#[derive(Debug, Clone, Object)]
pub struct MissingBlobs {
    /// The subset of the request that must be uploaded.
    pub missing: Vec<String>,
}

/// `POST /packages/{id}/links` body: add a file from bytes the tenant already holds.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct LinkFile {
    /// Path inside the package.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub relative_path: Text,
    /// `blake3:<hex>` or `sha256:<hex>` of bytes the tenant already holds.
    #[oai(validator(pattern = r"^(blake3|sha256):[0-9a-f]{64}$"))]
    pub content_address: Text,
    /// Media type; `application/octet-stream` when absent.
    #[oai(skip_serializing_if_is_none)]
    pub media_type: Opt<Text>,
    /// Replace an existing file at the same path.
    #[oai(skip_serializing_if_is_none)]
    pub replace: Opt<bool>,
}

/// `POST /packages/{id}/links/batch` body: many links in one transaction.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct LinkFiles {
    /// The files to add (1-1000, distinct paths): all of them are added, or none.
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub links: Vec<LinkFile>,
}

/// The files a batch link added, in request order.
#[derive(Debug, Clone, Object)]
pub struct LinkedFiles {
    /// One per link.
    pub files: Vec<FileInfo>,
}

/// The manifest, as its JSON projection (`GET /packages/{id}/manifest.json`). Documentation of
/// the shape only: the bytes served are the canonical JCS form of the CBOR manifest.
#[derive(Debug, Clone, Object)]
pub struct ManifestJson {
    /// Always 1.
    pub manifest_version: u64,
    /// Package identity and metadata.
    pub package: ManifestPackageJson,
    /// Every file, sorted by relative path.
    pub files: Vec<ManifestFileJson>,
    /// Where each distinct blob is stored, sorted by content address.
    pub storage_receipts: Vec<StorageReceiptJson>,
    /// The retention the package was finalized under.
    pub retention_summary: RetentionSummaryJson,
    /// Who and what produced the manifest.
    pub provenance: ProvenanceJson,
}

/// Package identity inside a manifest.
#[derive(Debug, Clone, Object)]
pub struct ManifestPackageJson {
    /// Package id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// Producer.
    pub producer: String,
    /// Subject.
    pub subject: String,
    /// Retention class.
    pub retention_class: String,
    /// Text labels.
    pub metadata: BTreeMap<String, String>,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub created_at: String,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub finalized_at: String,
}

/// One file of a manifest.
#[derive(Debug, Clone, Object)]
pub struct ManifestFileJson {
    /// Path inside the package.
    pub relative_path: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Both digests, bare lowercase hex.
    pub digests: Digests,
}

/// Where a blob is stored.
#[derive(Debug, Clone, Object)]
pub struct StorageReceiptJson {
    /// `blake3:<hex>`.
    pub content_address: String,
    /// Backend id.
    pub backend_id: String,
    /// When the package's tenant first stored these bytes, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub stored_at: String,
}

/// Retention at finalization.
#[derive(Debug, Clone, Object)]
pub struct RetentionSummaryJson {
    /// Class name.
    pub class: String,
    /// The class's duration in seconds; null means forever.
    #[oai(nullable)]
    pub duration_seconds: Option<u64>,
    /// Expiry; null means never.
    #[oai(nullable)]
    pub expires_at: Option<String>,
    /// Whether a legal hold was in force.
    pub legal_hold: bool,
}

/// What produced the manifest.
#[derive(Debug, Clone, Object)]
pub struct ProvenanceJson {
    /// `artifactstore/<version>`.
    pub generator: String,
    /// The token that finalized the package, when known.
    #[oai(nullable)]
    pub finalized_by: Option<String>,
    /// What the producer attached at finalize; absent when nothing was.
    pub supplied: Option<SuppliedProvenanceJson>,
}

/// The producer's provenance (the spec's `SuppliedProvenance`, whose full description
/// `spec.rs` gives).
#[derive(Debug, Clone, Object)]
#[oai(rename = "SuppliedProvenance")]
pub struct SuppliedProvenanceJson {
    /// A URI naming the predicate's format.
    pub predicate_type: Option<String>,
    /// The producer's JSON object.
    pub predicate: serde_json::Value,
}

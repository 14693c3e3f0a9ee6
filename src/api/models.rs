//! Request and response bodies. Field names are a contract: clients are generated from them.

use super::text::Text;
use crate::registry::{FileRecord, Package as RegistryPackage, PackageStatus};
use poem_openapi::{Enum, Object};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// Open packages accept files; finalized ones are immutable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Status {
    /// Accepting files.
    Open,
    /// Immutable, with a manifest.
    Finalized,
}

impl From<PackageStatus> for Status {
    fn from(s: PackageStatus) -> Self {
        match s {
            PackageStatus::Open => Status::Open,
            PackageStatus::Finalized => Status::Finalized,
        }
    }
}

impl From<Status> for PackageStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Open => PackageStatus::Open,
            Status::Finalized => PackageStatus::Finalized,
        }
    }
}

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
    /// `open` or `finalized`.
    pub status: Status,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was finalized.
    pub finalized_at: Option<OffsetDateTime>,
    /// `blake3:<hex>` of the manifest's canonical CBOR, once finalized.
    pub manifest_digest: Option<String>,
    /// Number of files.
    pub file_count: u64,
    /// Sum of file sizes in bytes.
    pub total_size: u64,
    /// The files, sorted by relative path (only on `GET /packages/{id}`).
    #[oai(skip_serializing_if_is_none)]
    pub files: Option<Vec<File>>,
}

impl From<RegistryPackage> for Package {
    fn from(p: RegistryPackage) -> Self {
        Package {
            id: p.id.0,
            tenant: p.tenant.to_string(),
            producer: p.producer,
            subject: p.subject,
            retention_class: p.retention_class,
            metadata: p.metadata.entries().clone(),
            status: p.status.into(),
            created_at: p.created_at.as_datetime(),
            finalized_at: p.finalized_at.map(|t| t.as_datetime()),
            manifest_digest: p.manifest_digest.map(|d| d.to_string()),
            file_count: p.file_count,
            total_size: p.total_size,
            files: None,
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
pub struct File {
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

impl From<FileRecord> for File {
    fn from(f: FileRecord) -> Self {
        File {
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
    pub producer: Text,
    /// What it is about (1-256 bytes).
    pub subject: Text,
    /// Retention class; `standard` when absent.
    pub retention_class: Option<Text>,
    /// Text labels: keys `[A-Za-z0-9._:/-]{1,128}`, values up to 4 KiB, at most 64 entries.
    pub metadata: Option<BTreeMap<String, Text>>,
}

/// A page of packages, newest first.
#[derive(Debug, Clone, Object)]
pub struct PackageList {
    /// The packages.
    pub items: Vec<Package>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /blobs/missing` body.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct MissingBlobsRequest {
    /// Content addresses (`blake3:<hex>` or `sha256:<hex>`), at most 1000.
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
    pub relative_path: Text,
    /// `blake3:<hex>` or `sha256:<hex>` of bytes the tenant already holds.
    pub content_address: Text,
    /// Media type; `application/octet-stream` when absent.
    pub media_type: Option<Text>,
    /// Replace an existing file at the same path.
    pub replace: Option<bool>,
}

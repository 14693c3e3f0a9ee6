//! Typed event payloads (canonical CBOR in the log).

use crate::error::{Error, Result};
use crate::manifest::{Manifest, to_canonical_cbor};
use crate::model::{FileId, Metadata, PackageId, RelativePath, TenantId, Timestamp};
use uuid::Uuid;

/// `v1.package.created`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageCreated {
    /// New package id.
    pub package_id: PackageId,
    /// Owner.
    pub tenant: TenantId,
    /// Producer label.
    pub producer: String,
    /// Subject label.
    pub subject: String,
    /// Retention class name.
    pub retention_class: String,
    /// Text labels.
    pub metadata: Metadata,
    /// Creation time.
    pub created_at: Timestamp,
}

/// `v1.file.ingested`: bytes are stored and a file now names them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIngested {
    /// New file id.
    pub file_id: FileId,
    /// Package it belongs to.
    pub package_id: PackageId,
    /// Path inside the package.
    pub relative_path: RelativePath,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// BLAKE3, bare hex.
    pub blake3: String,
    /// SHA-256, bare hex.
    pub sha256: String,
    /// Backend holding the bytes.
    pub backend_id: String,
    /// Key within that backend.
    pub storage_key: String,
    /// The file this one replaced at the same path, if any.
    pub replaced_file_id: Option<FileId>,
    /// When.
    pub ingested_at: Timestamp,
}

/// An event before it is appended.
#[derive(Debug, Clone)]
pub enum DomainEvent {
    /// `v1.package.created`.
    PackageCreated(PackageCreated),
    /// `v1.file.ingested`.
    FileIngested {
        /// Owner.
        tenant: TenantId,
        /// Payload.
        event: FileIngested,
    },
    /// `v1.package.finalized`: the payload *is* the manifest's canonical CBOR.
    PackageFinalized {
        /// The manifest.
        manifest: Box<Manifest>,
        /// Its canonical CBOR bytes.
        cbor: Vec<u8>,
    },
}

/// Event type names.
pub mod types {
    /// A package was opened.
    pub const PACKAGE_CREATED: &str = "v1.package.created";
    /// A file was added to an open package.
    pub const FILE_INGESTED: &str = "v1.file.ingested";
    /// A package was finalized; the payload is its manifest.
    pub const PACKAGE_FINALIZED: &str = "v1.package.finalized";
}

impl DomainEvent {
    /// The event type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            DomainEvent::PackageCreated(_) => types::PACKAGE_CREATED,
            DomainEvent::FileIngested { .. } => types::FILE_INGESTED,
            DomainEvent::PackageFinalized { .. } => types::PACKAGE_FINALIZED,
        }
    }

    /// The owning tenant.
    pub fn tenant(&self) -> &TenantId {
        match self {
            DomainEvent::PackageCreated(e) => &e.tenant,
            DomainEvent::FileIngested { tenant, .. } => tenant,
            DomainEvent::PackageFinalized { manifest, .. } => &manifest.package.tenant,
        }
    }

    /// The id of the thing the event is about (the package, for all current types).
    pub fn subject_id(&self) -> Uuid {
        match self {
            DomainEvent::PackageCreated(e) => e.package_id.0,
            DomainEvent::FileIngested { event, .. } => event.package_id.0,
            DomainEvent::PackageFinalized { manifest, .. } => manifest.package.id.0,
        }
    }

    /// When it happened.
    pub fn occurred_at(&self) -> Timestamp {
        match self {
            DomainEvent::PackageCreated(e) => e.created_at,
            DomainEvent::FileIngested { event, .. } => event.ingested_at,
            DomainEvent::PackageFinalized { manifest, .. } => manifest.package.finalized_at,
        }
    }

    /// Canonical CBOR payload.
    pub fn payload(&self) -> Result<Vec<u8>> {
        let encoded = match self {
            DomainEvent::PackageCreated(e) => to_canonical_cbor(e),
            DomainEvent::FileIngested { event, .. } => to_canonical_cbor(event),
            DomainEvent::PackageFinalized { cbor, .. } => return Ok(cbor.clone()),
        };
        encoded.map_err(|e| Error::Integrity(format!("encoding event payload: {e}")))
    }
}

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

/// What verification found of one stored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocationStatus {
    /// The bytes are there and hash to their address.
    Present,
    /// The bytes are there but differ (corrupt or truncated).
    Failed,
    /// The backend does not have them.
    Missing,
    /// Removed on purpose (moved to another backend, or collected).
    Deleted,
}

impl LocationStatus {
    /// The `storage_locations.status` text.
    pub fn as_str(self) -> &'static str {
        match self {
            LocationStatus::Present => "present",
            LocationStatus::Failed => "failed",
            LocationStatus::Missing => "missing",
            LocationStatus::Deleted => "deleted",
        }
    }

    /// Parses the column text.
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "present" => LocationStatus::Present,
            "failed" => LocationStatus::Failed,
            "missing" => LocationStatus::Missing,
            "deleted" => LocationStatus::Deleted,
            other => {
                return Err(Error::InvalidInput(format!(
                    "`{}` is not a location status (present, failed, missing, deleted)",
                    other.escape_debug()
                )));
            }
        })
    }
}

/// `v1.storage.location_verified`: a stored copy was re-read and its primary digest recomputed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationVerified {
    /// The blob, bare BLAKE3 hex.
    pub blake3: String,
    /// The backend holding the copy.
    pub backend_id: String,
    /// Whether the copy is intact.
    pub ok: bool,
    /// `present` (ok), `failed` (bytes differ) or `missing`.
    pub status: LocationStatus,
    /// What the bytes read hash to, when there were bytes.
    pub observed_blake3: Option<String>,
    /// How many bytes were read, when there were bytes.
    pub observed_size: Option<u64>,
    /// When.
    pub verified_at: Timestamp,
}

/// `v1.storage.location_added`: a verified copy of a blob now exists on another backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationAdded {
    /// The blob, bare BLAKE3 hex.
    pub blake3: String,
    /// The backend now holding a copy.
    pub backend_id: String,
    /// Key within that backend.
    pub storage_key: String,
    /// When.
    pub added_at: Timestamp,
}

/// `v1.storage.location_removed`: a copy was removed on purpose (after a move).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationRemoved {
    /// The blob, bare BLAKE3 hex.
    pub blake3: String,
    /// The backend that no longer holds it.
    pub backend_id: String,
    /// When.
    pub removed_at: Timestamp,
}

/// An event about physical storage (tenant `system`, subject: the blob).
#[derive(Debug, Clone)]
pub enum StorageEvent {
    /// `v1.storage.location_verified`.
    Verified(LocationVerified),
    /// `v1.storage.location_added`.
    Added(LocationAdded),
    /// `v1.storage.location_removed`.
    Removed(LocationRemoved),
    /// `v1.blob.collected`.
    Collected(BlobCollected),
}

impl StorageEvent {
    fn blake3(&self) -> &str {
        match self {
            StorageEvent::Verified(e) => &e.blake3,
            StorageEvent::Added(e) => &e.blake3,
            StorageEvent::Removed(e) => &e.blake3,
            StorageEvent::Collected(e) => &e.blake3,
        }
    }
}

/// The subject id of events about a blob: a UUID (version 8) made from its BLAKE3 digest, so
/// every event about one blob shares it.
pub fn blob_subject_id(blake3_hex: &str) -> Uuid {
    let mut bytes = [0u8; 16];
    if let Ok(digest) = crate::identity::Digest::from_hex(blake3_hex) {
        bytes.copy_from_slice(&digest.0[..16]);
    }
    Uuid::new_v8(bytes)
}

/// The subject id of events about a named thing (a tenant): a UUID (version 8) made from its
/// kind and name, so every event about it shares one.
pub fn name_subject_id(kind: &str, name: &str) -> Uuid {
    let hash = blake3::Hasher::new()
        .update(kind.as_bytes())
        .update(b"\0")
        .update(name.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_bytes()[..16]);
    Uuid::new_v8(bytes)
}

/// `v1.retention.class_defined`: an admin defined or redefined a retention class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDefined {
    /// Class name.
    pub name: String,
    /// How long packages of the class are kept after finalization; `None`: forever.
    pub duration_seconds: Option<u64>,
    /// What the class is for.
    pub description: String,
    /// When.
    pub defined_at: Timestamp,
}

/// `v1.retention.hold_set`: a legal hold was put on a package.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldSet {
    /// The package.
    pub package_id: PackageId,
    /// Why.
    pub reason: String,
    /// When.
    pub set_at: Timestamp,
}

/// `v1.retention.hold_released`: a package's legal hold was lifted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldReleased {
    /// The package.
    pub package_id: PackageId,
    /// When.
    pub released_at: Timestamp,
}

/// `v1.retention.class_changed`: a package moved to another retention class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassChanged {
    /// The package.
    pub package_id: PackageId,
    /// The class it had.
    pub from: String,
    /// The class it has now.
    pub to: String,
    /// Its new expiry (finalized packages); `None`: never, or not finalized yet.
    pub expires_at: Option<Timestamp>,
    /// An admin allowed the expiry to move earlier than the old class promised.
    pub forced: bool,
    /// When.
    pub changed_at: Timestamp,
}

/// `v1.package.expired`: a package's retention ran out; its files left the views, its manifest
/// stays as a tombstone record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageExpired {
    /// The package.
    pub package_id: PackageId,
    /// Its retention class.
    pub retention_class: String,
    /// `retention` (a finalized package's class ran out) or `abandoned` (never finalized).
    pub reason: String,
    /// When it was due.
    pub due_at: Timestamp,
    /// When it expired.
    pub expired_at: Timestamp,
}

/// `v1.blob.collected`: an unreferenced blob's bytes were deleted from every backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobCollected {
    /// The blob, bare BLAKE3 hex.
    pub blake3: String,
    /// Its size.
    pub size: u64,
    /// The backends its copies were deleted from.
    pub backends: Vec<String>,
    /// Since when no file referenced it.
    pub unreferenced_since: Timestamp,
    /// When.
    pub collected_at: Timestamp,
}

/// `v1.tenant.quota_set`: the operator set a tenant's limits (`None`: no limit).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSet {
    /// The tenant the limits are for (the event is that tenant's).
    pub tenant: TenantId,
    /// Most logical bytes: live files plus open upload sessions' declared sizes.
    pub max_bytes: Option<u64>,
    /// Most live packages.
    pub max_packages: Option<u64>,
    /// Most open upload sessions.
    pub max_upload_sessions: Option<u64>,
    /// When.
    pub set_at: Timestamp,
}

/// An event about retention.
#[derive(Debug, Clone)]
pub enum RetentionEvent {
    /// `v1.retention.class_defined` (tenant `system`).
    ClassDefined(ClassDefined),
    /// `v1.retention.hold_set`.
    HoldSet {
        /// Owner.
        tenant: TenantId,
        /// Payload.
        event: HoldSet,
    },
    /// `v1.retention.hold_released`.
    HoldReleased {
        /// Owner.
        tenant: TenantId,
        /// Payload.
        event: HoldReleased,
    },
    /// `v1.retention.class_changed`.
    ClassChanged {
        /// Owner.
        tenant: TenantId,
        /// Payload.
        event: ClassChanged,
    },
    /// `v1.package.expired`.
    Expired {
        /// Owner.
        tenant: TenantId,
        /// Payload.
        event: PackageExpired,
    },
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
    /// `v1.storage.*`.
    Storage(StorageEvent),
    /// `v1.retention.*` and `v1.package.expired`.
    Retention(RetentionEvent),
    /// `v1.tenant.quota_set`.
    QuotaSet(QuotaSet),
}

/// Event type names.
pub mod types {
    /// A package was opened.
    pub const PACKAGE_CREATED: &str = "v1.package.created";
    /// A file was added to an open package.
    pub const FILE_INGESTED: &str = "v1.file.ingested";
    /// A package was finalized; the payload is its manifest.
    pub const PACKAGE_FINALIZED: &str = "v1.package.finalized";
    /// A stored copy was verified.
    pub const LOCATION_VERIFIED: &str = "v1.storage.location_verified";
    /// A copy was added on another backend.
    pub const LOCATION_ADDED: &str = "v1.storage.location_added";
    /// A copy was removed on purpose.
    pub const LOCATION_REMOVED: &str = "v1.storage.location_removed";
    /// A retention class was defined.
    pub const CLASS_DEFINED: &str = "v1.retention.class_defined";
    /// A legal hold was set.
    pub const HOLD_SET: &str = "v1.retention.hold_set";
    /// A legal hold was released.
    pub const HOLD_RELEASED: &str = "v1.retention.hold_released";
    /// A package's retention class changed.
    pub const CLASS_CHANGED: &str = "v1.retention.class_changed";
    /// A package expired.
    pub const PACKAGE_EXPIRED: &str = "v1.package.expired";
    /// An unreferenced blob was collected.
    pub const BLOB_COLLECTED: &str = "v1.blob.collected";
    /// A tenant's quota was set.
    pub const QUOTA_SET: &str = "v1.tenant.quota_set";
}

impl DomainEvent {
    /// The event type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            DomainEvent::PackageCreated(_) => types::PACKAGE_CREATED,
            DomainEvent::FileIngested { .. } => types::FILE_INGESTED,
            DomainEvent::PackageFinalized { .. } => types::PACKAGE_FINALIZED,
            DomainEvent::Storage(StorageEvent::Verified(_)) => types::LOCATION_VERIFIED,
            DomainEvent::Storage(StorageEvent::Added(_)) => types::LOCATION_ADDED,
            DomainEvent::Storage(StorageEvent::Removed(_)) => types::LOCATION_REMOVED,
            DomainEvent::Storage(StorageEvent::Collected(_)) => types::BLOB_COLLECTED,
            DomainEvent::Retention(e) => match e {
                RetentionEvent::ClassDefined(_) => types::CLASS_DEFINED,
                RetentionEvent::HoldSet { .. } => types::HOLD_SET,
                RetentionEvent::HoldReleased { .. } => types::HOLD_RELEASED,
                RetentionEvent::ClassChanged { .. } => types::CLASS_CHANGED,
                RetentionEvent::Expired { .. } => types::PACKAGE_EXPIRED,
            },
            DomainEvent::QuotaSet(_) => types::QUOTA_SET,
        }
    }

    /// The owning tenant.
    pub fn tenant(&self) -> &TenantId {
        static SYSTEM: std::sync::LazyLock<TenantId> = std::sync::LazyLock::new(TenantId::system);
        match self {
            DomainEvent::Storage(_) | DomainEvent::Retention(RetentionEvent::ClassDefined(_)) => {
                &SYSTEM
            }
            DomainEvent::Retention(
                RetentionEvent::HoldSet { tenant, .. }
                | RetentionEvent::HoldReleased { tenant, .. }
                | RetentionEvent::ClassChanged { tenant, .. }
                | RetentionEvent::Expired { tenant, .. },
            ) => tenant,
            DomainEvent::PackageCreated(e) => &e.tenant,
            DomainEvent::QuotaSet(e) => &e.tenant,
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
            DomainEvent::Storage(e) => blob_subject_id(e.blake3()),
            DomainEvent::QuotaSet(e) => name_subject_id("tenant", e.tenant.as_str()),
            DomainEvent::Retention(e) => match e {
                RetentionEvent::ClassDefined(c) => {
                    let hash = blake3::hash(c.name.as_bytes());
                    let mut bytes = [0u8; 16];
                    bytes.copy_from_slice(&hash.as_bytes()[..16]);
                    Uuid::new_v8(bytes)
                }
                RetentionEvent::HoldSet { event, .. } => event.package_id.0,
                RetentionEvent::HoldReleased { event, .. } => event.package_id.0,
                RetentionEvent::ClassChanged { event, .. } => event.package_id.0,
                RetentionEvent::Expired { event, .. } => event.package_id.0,
            },
        }
    }

    /// When it happened.
    pub fn occurred_at(&self) -> Timestamp {
        match self {
            DomainEvent::PackageCreated(e) => e.created_at,
            DomainEvent::FileIngested { event, .. } => event.ingested_at,
            DomainEvent::PackageFinalized { manifest, .. } => manifest.package.finalized_at,
            DomainEvent::Storage(StorageEvent::Verified(e)) => e.verified_at,
            DomainEvent::Storage(StorageEvent::Added(e)) => e.added_at,
            DomainEvent::Storage(StorageEvent::Removed(e)) => e.removed_at,
            DomainEvent::Storage(StorageEvent::Collected(e)) => e.collected_at,
            DomainEvent::QuotaSet(e) => e.set_at,
            DomainEvent::Retention(e) => match e {
                RetentionEvent::ClassDefined(c) => c.defined_at,
                RetentionEvent::HoldSet { event, .. } => event.set_at,
                RetentionEvent::HoldReleased { event, .. } => event.released_at,
                RetentionEvent::ClassChanged { event, .. } => event.changed_at,
                RetentionEvent::Expired { event, .. } => event.expired_at,
            },
        }
    }

    /// Canonical CBOR payload.
    pub fn payload(&self) -> Result<Vec<u8>> {
        let encoded = match self {
            DomainEvent::PackageCreated(e) => to_canonical_cbor(e),
            DomainEvent::FileIngested { event, .. } => to_canonical_cbor(event),
            DomainEvent::PackageFinalized { cbor, .. } => return Ok(cbor.clone()),
            DomainEvent::Storage(StorageEvent::Verified(e)) => to_canonical_cbor(e),
            DomainEvent::Storage(StorageEvent::Added(e)) => to_canonical_cbor(e),
            DomainEvent::Storage(StorageEvent::Removed(e)) => to_canonical_cbor(e),
            DomainEvent::Storage(StorageEvent::Collected(e)) => to_canonical_cbor(e),
            DomainEvent::QuotaSet(e) => to_canonical_cbor(e),
            DomainEvent::Retention(e) => match e {
                RetentionEvent::ClassDefined(c) => to_canonical_cbor(c),
                RetentionEvent::HoldSet { event, .. } => to_canonical_cbor(event),
                RetentionEvent::HoldReleased { event, .. } => to_canonical_cbor(event),
                RetentionEvent::ClassChanged { event, .. } => to_canonical_cbor(event),
                RetentionEvent::Expired { event, .. } => to_canonical_cbor(event),
            },
        };
        encoded.map_err(|e| Error::Integrity(format!("encoding event payload: {e}")))
    }
}

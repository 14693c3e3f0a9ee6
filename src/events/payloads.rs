//! The payload of each kind of event (canonical CBOR in the log), and what each says of itself
//! ([`EventKind`]). Their type names are in the table in `kinds.rs`.

use super::kinds::{EventKind, OwnerInPayload, PayloadCodec};
use crate::domain::{FileId, Metadata, PackageId, RelativePath, TenantId, Timestamp};
use crate::error::{Error, Result};
use crate::manifest::{CodecError, Manifest};
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

/// What is known of one stored copy: `present` (stored, intact when last verified), `failed`
/// (the bytes differ from their address), `missing` (the backend lost them), `deleted`
/// (removed on purpose).
// Also the API's `CopyStatus` schema: this documentation is the spec's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, poem_openapi::Enum,
)]
#[serde(rename_all = "lowercase")]
#[oai(rename = "CopyStatus", rename_all = "lowercase")]
pub enum LocationStatus {
    /// Stored (and intact when last verified).
    Present,
    /// The bytes differ from their address.
    Failed,
    /// The backend does not have the bytes.
    Missing,
    /// Removed on purpose.
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

/// `v1.file.removed`: a file was taken out of an open package; its bytes stay while another
/// file names them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRemoved {
    /// The file.
    pub file_id: FileId,
    /// Its package.
    pub package_id: PackageId,
    /// Its path there.
    pub relative_path: RelativePath,
    /// The token that removed it.
    pub removed_by: String,
    /// When.
    pub removed_at: Timestamp,
}

/// `v1.package.abandoned`: its producer gave up an open package; its files leave it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageAbandoned {
    /// The package.
    pub package_id: PackageId,
    /// The token that abandoned it.
    pub abandoned_by: String,
    /// Why, if said.
    pub reason: Option<String>,
    /// When.
    pub abandoned_at: Timestamp,
}

/// `v1.package.withdrawn`: a tenant admin withdrew a finalized package before its retention
/// ran out; its files leave it, its manifest stays as the record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageWithdrawn {
    /// The package.
    pub package_id: PackageId,
    /// The token that withdrew it.
    pub withdrawn_by: String,
    /// Why, if said.
    pub reason: Option<String>,
    /// When.
    pub withdrawn_at: Timestamp,
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

/// `v1.package.finalized`: the payload is the manifest's canonical CBOR, stored as it was
/// signed off (never re-encoded).
#[derive(Debug, Clone)]
pub struct PackageFinalized {
    /// The manifest.
    pub manifest: Box<Manifest>,
    /// Its canonical CBOR bytes.
    pub cbor: Vec<u8>,
}

impl PayloadCodec for PackageFinalized {
    fn encode(&self) -> std::result::Result<Vec<u8>, CodecError> {
        Ok(self.cbor.clone())
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, CodecError> {
        Ok(PackageFinalized {
            manifest: Box::new(Manifest::from_cbor(bytes)?),
            cbor: bytes.to_vec(),
        })
    }
}

/// The subject id of a retention class's events: a UUID (version 8) made from its name.
fn class_subject_id(name: &str) -> Uuid {
    let hash = blake3::hash(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_bytes()[..16]);
    Uuid::new_v8(bytes)
}

/// `EventKind` for payloads about a package: `$at` is the field holding the time.
macro_rules! about_package {
    ($($payload:ident: $at:ident,)+) => {
        $(
            impl EventKind for $payload {
                fn subject_id(&self) -> Uuid {
                    self.package_id.0
                }

                fn occurred_at(&self) -> Timestamp {
                    self.$at
                }
            }
        )+
    };
}

about_package! {
    PackageCreated: created_at,
    FileIngested: ingested_at,
    HoldSet: set_at,
    HoldReleased: released_at,
    ClassChanged: changed_at,
    PackageExpired: expired_at,
    FileRemoved: removed_at,
    PackageAbandoned: abandoned_at,
    PackageWithdrawn: withdrawn_at,
}

/// `EventKind` and the `system` owner for payloads about a blob.
macro_rules! about_blob {
    ($($payload:ident: $at:ident,)+) => {
        $(
            impl EventKind for $payload {
                fn subject_id(&self) -> Uuid {
                    blob_subject_id(&self.blake3)
                }

                fn occurred_at(&self) -> Timestamp {
                    self.$at
                }
            }

            impl OwnerInPayload for $payload {
                fn owner(&self) -> TenantId {
                    TenantId::system()
                }
            }
        )+
    };
}

about_blob! {
    LocationVerified: verified_at,
    LocationAdded: added_at,
    LocationRemoved: removed_at,
    BlobCollected: collected_at,
}

impl OwnerInPayload for PackageCreated {
    fn owner(&self) -> TenantId {
        self.tenant.clone()
    }
}

impl EventKind for PackageFinalized {
    fn subject_id(&self) -> Uuid {
        self.manifest.package.id.0
    }

    fn occurred_at(&self) -> Timestamp {
        self.manifest.package.finalized_at
    }
}

impl OwnerInPayload for PackageFinalized {
    fn owner(&self) -> TenantId {
        self.manifest.package.tenant.clone()
    }
}

impl EventKind for ClassDefined {
    fn subject_id(&self) -> Uuid {
        class_subject_id(&self.name)
    }

    fn occurred_at(&self) -> Timestamp {
        self.defined_at
    }
}

/// Retention classes are global: their events are the reserved tenant's.
impl OwnerInPayload for ClassDefined {
    fn owner(&self) -> TenantId {
        TenantId::system()
    }
}

impl EventKind for QuotaSet {
    fn subject_id(&self) -> Uuid {
        name_subject_id("tenant", self.tenant.as_str())
    }

    fn occurred_at(&self) -> Timestamp {
        self.set_at
    }
}

/// A quota is the event of the tenant it limits.
impl OwnerInPayload for QuotaSet {
    fn owner(&self) -> TenantId {
        self.tenant.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_ids_are_stable() {
        // Stored events carry these ids: they never change for the same input. The expected
        // values were computed apart from this code (Python's `blake3` and `uuid`).
        assert_eq!(
            class_subject_id("standard").to_string(),
            "edbe3125-3593-80f3-9612-8a122164abc0"
        );
        assert_eq!(
            name_subject_id("tenant", "acme").to_string(),
            "2e56203b-3288-83a4-a5e2-d52306f244af"
        );
        let blake3 = "ab".repeat(32);
        assert_eq!(blob_subject_id(&blake3).as_bytes()[..6], [0xab; 6]);
    }
}

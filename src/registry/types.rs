//! What the registry takes and returns.

use crate::domain::{FileId, Metadata, PackageId, RelativePath, TenantId, Timestamp};
use crate::error::{Error, Result};
use crate::identity::{ContentAddress, Digest};
use tokio_postgres::Row;

/// Open packages accept files; finalized ones are immutable; expired, abandoned and withdrawn
/// ones are gone (a finalized one's manifest stays readable as its tombstone record).
// Also the API's `Status` schema: this documentation is the spec's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename = "Status", rename_all = "lowercase")]
pub enum PackageStatus {
    /// Accepting files.
    Open,
    /// Immutable, with a manifest.
    Finalized,
    /// Retention ran out: files removed, manifest kept.
    Expired,
    /// Given up while open (`DELETE`): files removed.
    Abandoned,
    /// Withdrawn once finalized (`DELETE` by a tenant admin): files removed, manifest kept.
    Withdrawn,
}

impl PackageStatus {
    /// Every status, in its lifecycle's order.
    pub const ALL: [PackageStatus; 5] = [
        PackageStatus::Open,
        PackageStatus::Finalized,
        PackageStatus::Expired,
        PackageStatus::Abandoned,
        PackageStatus::Withdrawn,
    ];

    /// Its name (`open`, `finalized`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PackageStatus::Open => "open",
            PackageStatus::Finalized => "finalized",
            PackageStatus::Expired => "expired",
            PackageStatus::Abandoned => "abandoned",
            PackageStatus::Withdrawn => "withdrawn",
        }
    }

    /// Parses a status's name.
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                Error::InvalidInput(format!(
                    "status `{}` is unknown (expected one of: {})",
                    text.escape_debug(),
                    names.join(", ")
                ))
            })
    }

    /// Gone: no file can be read or added (expired, abandoned or withdrawn).
    pub fn is_gone(self) -> bool {
        !matches!(self, PackageStatus::Open | PackageStatus::Finalized)
    }
}

/// A package.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    /// Id.
    pub id: PackageId,
    /// Owner.
    pub tenant: TenantId,
    /// Producer label.
    pub producer: String,
    /// Subject label.
    pub subject: String,
    /// Retention class.
    pub retention_class: String,
    /// Text labels.
    pub metadata: Metadata,
    /// Open or finalized.
    pub status: PackageStatus,
    /// Creation time.
    pub created_at: Timestamp,
    /// Finalization time.
    pub finalized_at: Option<Timestamp>,
    /// `blake3:` of the manifest's CBOR, once finalized.
    pub manifest_digest: Option<ContentAddress>,
    /// Number of files.
    pub file_count: u64,
    /// Sum of file sizes.
    pub total_size: u64,
    /// Position of its creation event (orders listings, newest first).
    pub created_position: i64,
    /// Expiry and legal hold.
    pub retention: RetentionInfo,
    /// Who abandoned or withdrew it, when and why.
    pub removal: Option<Removal>,
}

/// How a package was removed before its retention ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The token that removed it.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// Why, if said.
    pub reason: Option<String>,
}

/// A package's retention state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionInfo {
    /// When a finalized package expires (`None`: never, or not finalized yet).
    pub expires_at: Option<Timestamp>,
    /// Under legal hold.
    pub legal_hold: bool,
    /// Why it is held.
    pub hold_reason: Option<String>,
    /// When it expired.
    pub expired_at: Option<Timestamp>,
    /// Why it expired (`retention` or `abandoned`).
    pub expiry_reason: Option<String>,
}

pub(crate) const PACKAGE_COLUMNS: &str = "packages.id, packages.tenant, producer, subject, \
    retention_class, metadata, status, created_at, created_position, finalized_at, \
    manifest_digest, file_count, total_size, r.expires_at, r.legal_hold, r.hold_reason, \
    r.expired_at, r.expiry_reason, removed_at, removed_by, removal_reason";

/// The `FROM` of queries selecting [`PACKAGE_COLUMNS`].
pub(crate) const PACKAGE_FROM: &str =
    "packages JOIN retention_state r ON r.package_id = packages.id";

impl Package {
    pub(crate) fn from_row(row: &Row) -> Result<Self> {
        let metadata: serde_json::Value = row.get("metadata");
        let digest: Option<String> = row.get("manifest_digest");
        Ok(Package {
            id: PackageId(row.get("id")),
            tenant: TenantId::new(row.get("tenant"))?,
            producer: row.get("producer"),
            subject: row.get("subject"),
            retention_class: row.get("retention_class"),
            metadata: serde_json::from_value(metadata)
                .map_err(|e| Error::Integrity(format!("package metadata: {e}")))?,
            status: PackageStatus::parse(row.get("status"))?,
            created_at: Timestamp::from_datetime(row.get("created_at")),
            finalized_at: row
                .get::<_, Option<time::OffsetDateTime>>("finalized_at")
                .map(Timestamp::from_datetime),
            manifest_digest: digest
                .map(|d| {
                    d.parse()
                        .map_err(|e| Error::Integrity(format!("manifest digest: {e}")))
                })
                .transpose()?,
            file_count: row.get::<_, i32>("file_count") as u64,
            total_size: row.get::<_, i64>("total_size") as u64,
            created_position: row.get("created_position"),
            retention: RetentionInfo {
                expires_at: row
                    .get::<_, Option<time::OffsetDateTime>>("expires_at")
                    .map(Timestamp::from_datetime),
                legal_hold: row.get("legal_hold"),
                hold_reason: row.get("hold_reason"),
                expired_at: row
                    .get::<_, Option<time::OffsetDateTime>>("expired_at")
                    .map(Timestamp::from_datetime),
                expiry_reason: row.get("expiry_reason"),
            },
            removal: row
                .get::<_, Option<time::OffsetDateTime>>("removed_at")
                .map(|at| Removal {
                    by: row
                        .get::<_, Option<String>>("removed_by")
                        .unwrap_or_default(),
                    at: Timestamp::from_datetime(at),
                    reason: row.get("removal_reason"),
                }),
        })
    }
}

/// A file in a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Id.
    pub id: FileId,
    /// Package.
    pub package_id: PackageId,
    /// Path inside the package.
    pub relative_path: RelativePath,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// BLAKE3 digest.
    pub blake3: Digest,
    /// SHA-256 digest.
    pub sha256: Digest,
    /// When it was ingested.
    pub created_at: Timestamp,
}

pub(crate) const FILE_COLUMNS: &str = "f.id, f.package_id, f.relative_path, f.size, f.media_type, \
    f.blake3, b.sha256, f.created_at";

impl FileRecord {
    /// `blake3:<hex>`.
    pub fn content_address(&self) -> ContentAddress {
        ContentAddress::blake3(self.blake3)
    }

    pub(crate) fn from_row(row: &Row) -> Result<Self> {
        let digest = |col: &str| {
            Digest::from_slice(row.get::<_, &[u8]>(col))
                .map_err(|e| Error::Integrity(e.to_string()))
        };
        Ok(FileRecord {
            id: FileId(row.get("id")),
            package_id: PackageId(row.get("package_id")),
            relative_path: RelativePath::stored(row.get("relative_path"))?,
            size: row.get::<_, i64>("size") as u64,
            media_type: row.get("media_type"),
            blake3: digest("blake3")?,
            sha256: digest("sha256")?,
            created_at: Timestamp::from_datetime(row.get("created_at")),
        })
    }
}

/// A finalized package's manifest.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// `blake3:` over `cbor`.
    pub digest: ContentAddress,
    /// Canonical CBOR.
    pub cbor: Vec<u8>,
}

/// One file to ingest.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// Where it goes in the package.
    pub relative_path: RelativePath,
    /// Media type; `application/octet-stream` when absent.
    pub media_type: Option<String>,
    /// If given, the bytes must have this digest (either algorithm) or nothing is kept.
    pub expected_digest: Option<ContentAddress>,
    /// Replace an existing file at the same path instead of failing with a conflict.
    pub replace: bool,
    /// Write only if the file now at the path matches (an `If-Match` precondition): the
    /// write replaces that file, and is refused (`PreconditionFailed`) otherwise.
    pub if_match: Option<IfMatch>,
}

/// A precondition on the file at a path, as `If-Match` states it (RFC 9110, strong
/// comparison): a file's entity tag is its BLAKE3 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// Some file is there (`*`).
    Any,
    /// The file there has one of these BLAKE3 digests (none: nothing matches).
    Blake3(Vec<Digest>),
}

impl IfMatch {
    /// Reads an `If-Match` header's values: `*`, or entity tags of which only strong
    /// `"blake3:<hex>"` ones can match (weak or other tags never do).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut digests = Vec::new();
        for tag in values.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
            if tag == "*" {
                return IfMatch::Any;
            }
            let address = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<ContentAddress>().ok());
            if let Some(address) = address
                && address.algorithm() == crate::identity::Algorithm::Blake3
            {
                digests.push(*address.digest());
            }
        }
        IfMatch::Blake3(digests)
    }

    /// Whether the file now at the path (its BLAKE3, or none) satisfies it.
    pub fn holds(&self, existing: Option<&Digest>) -> bool {
        match (self, existing) {
            (_, None) => false,
            (IfMatch::Any, Some(_)) => true,
            (IfMatch::Blake3(digests), Some(d)) => digests.contains(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_compares_strong_blake3_tags() {
        let a = Digest([1; 32]);
        let b = Digest([2; 32]);
        let tag = |d: &Digest| format!("\"blake3:{}\"", d.to_hex());
        let parse = |v: &str| IfMatch::parse([v]);
        assert_eq!(parse("*"), IfMatch::Any);
        assert_eq!(parse(&format!("{}, *", tag(&a))), IfMatch::Any);
        assert_eq!(
            IfMatch::parse([tag(&a).as_str(), tag(&b).as_str()]),
            IfMatch::Blake3(vec![a, b])
        );
        // Weak tags, other algorithms, unquoted or malformed tags never match.
        for v in [
            format!("W/{}", tag(&a)),
            format!("\"sha256:{}\"", a.to_hex()),
            format!("blake3:{}", a.to_hex()),
            "\"blake3:zz\"".to_owned(),
            String::new(),
        ] {
            assert!(!parse(&v).holds(Some(&a)), "{v}");
        }
        assert!(parse(&tag(&a)).holds(Some(&a)));
        assert!(!parse(&tag(&a)).holds(Some(&b)));
        assert!(!parse(&tag(&a)).holds(None));
        assert!(IfMatch::Any.holds(Some(&b)));
        assert!(!IfMatch::Any.holds(None));
    }
}

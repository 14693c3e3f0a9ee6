//! The manifest a package gets when it is finalized.

use super::canonical::{CodecError, from_canonical_cbor, jcs_from_cbor, to_canonical_cbor};
use super::provenance::SuppliedProvenance;
use crate::domain::{Metadata, PackageId, RelativePath, TenantId, Timestamp};
use crate::identity::{ContentAddress, Digest};

/// The only manifest version this build writes and reads.
pub const MANIFEST_VERSION: u64 = 1;

/// A finalized package's manifest. Field names and shapes are a contract: the canonical CBOR
/// bytes are what the manifest digest covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`].
    pub manifest_version: u64,
    /// Package identity and metadata.
    pub package: ManifestPackage,
    /// Every file, sorted by relative path.
    pub files: Vec<ManifestFile>,
    /// Where each distinct blob was stored, sorted by content address.
    pub storage_receipts: Vec<StorageReceipt>,
    /// The retention the package was finalized under.
    pub retention_summary: RetentionSummary,
    /// Who and what produced the manifest.
    pub provenance: Provenance,
}

/// Package identity inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPackage {
    /// Package id.
    pub id: PackageId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// What produced the package (e.g. a CI pipeline).
    pub producer: String,
    /// What the package is about (e.g. a commit, a release).
    pub subject: String,
    /// Retention class name.
    pub retention_class: String,
    /// Free-form text labels.
    pub metadata: Metadata,
    /// When the package was opened.
    pub created_at: Timestamp,
    /// When it was finalized.
    pub finalized_at: Timestamp,
}

/// One file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path inside the package.
    pub relative_path: RelativePath,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Both digests, bare lowercase hex.
    pub digests: FileDigests,
}

/// Bare-hex digests of a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigests {
    /// BLAKE3, 64 lowercase hex.
    pub blake3: String,
    /// SHA-256, 64 lowercase hex.
    pub sha256: String,
}

impl FileDigests {
    /// From digest values.
    pub fn new(blake3: &Digest, sha256: &Digest) -> Self {
        FileDigests {
            blake3: blake3.to_hex(),
            sha256: sha256.to_hex(),
        }
    }
}

/// Where a blob was stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageReceipt {
    /// `blake3:<hex>`.
    pub content_address: ContentAddress,
    /// Backend id from configuration.
    pub backend_id: String,
    /// When the package's tenant first stored these bytes (not the copy's own time, which may
    /// be another tenant's upload of the same bytes).
    pub stored_at: Timestamp,
}

/// Retention the package was finalized under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSummary {
    /// Class name.
    pub class: String,
    /// The class's duration in seconds at finalization; `null` means kept forever.
    pub duration_seconds: Option<u64>,
    /// When the package expires; `null` means never.
    pub expires_at: Option<Timestamp>,
    /// Whether a legal hold was in force at finalization.
    pub legal_hold: bool,
}

/// What produced the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `artifactstore/<version>`.
    pub generator: String,
    /// The principal that finalized the package, when known.
    pub finalized_by: Option<String>,
    /// What the producer attached at finalize (its claims, recorded as given). Absent when it
    /// attached nothing: manifests without it keep their exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplied: Option<SuppliedProvenance>,
}

impl Manifest {
    /// Canonical CBOR bytes.
    pub fn to_cbor(&self) -> Result<Vec<u8>, CodecError> {
        to_canonical_cbor(self)
    }

    /// Parses canonical CBOR; rejects other versions and non-canonical bytes.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CodecError> {
        let manifest: Manifest = from_canonical_cbor(bytes)?;
        if manifest.manifest_version != MANIFEST_VERSION {
            return Err(CodecError::Decode(format!(
                "manifest_version {} is not supported",
                manifest.manifest_version
            )));
        }
        Ok(manifest)
    }

    /// The JCS (RFC 8785) JSON projection of canonical CBOR bytes.
    pub fn jcs(cbor: &[u8]) -> Result<Vec<u8>, CodecError> {
        jcs_from_cbor(cbor)
    }

    /// `blake3:` over the canonical CBOR bytes.
    pub fn digest_of(cbor: &[u8]) -> ContentAddress {
        ContentAddress::blake3(Digest(*blake3::hash(cbor).as_bytes()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    pub(crate) fn sample() -> Manifest {
        let t = Timestamp::parse("2026-11-22T10:00:00.000001Z").unwrap();
        let d = Digest([7; 32]);
        Manifest {
            manifest_version: 1,
            package: ManifestPackage {
                id: PackageId(uuid::Uuid::nil()),
                tenant: TenantId::default_tenant(),
                producer: "ci".into(),
                subject: "commit abc".into(),
                retention_class: "standard".into(),
                metadata: Metadata::new(BTreeMap::from([("k".into(), "v".into())])).unwrap(),
                created_at: t,
                finalized_at: t,
            },
            files: vec![ManifestFile {
                relative_path: RelativePath::new("a/b.txt").unwrap(),
                size: 3,
                media_type: "text/plain".into(),
                digests: FileDigests::new(&d, &d),
            }],
            storage_receipts: vec![StorageReceipt {
                content_address: ContentAddress::blake3(d),
                backend_id: "local".into(),
                stored_at: t,
            }],
            retention_summary: RetentionSummary {
                class: "standard".into(),
                duration_seconds: Some(31_536_000),
                expires_at: t.plus_seconds(31_536_000),
                legal_hold: false,
            },
            provenance: Provenance {
                generator: "artifactstore/0.1.0".into(),
                finalized_by: None,
                supplied: None,
            },
        }
    }

    #[test]
    fn top_level_keys_are_the_contract() {
        let cbor = sample().to_cbor().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&Manifest::jcs(&cbor).unwrap()).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "files",
                "manifest_version",
                "package",
                "provenance",
                "retention_summary",
                "storage_receipts"
            ]
        );
        let file = &json["files"][0];
        assert_eq!(file["digests"]["blake3"], "07".repeat(32));
        assert_eq!(file["relative_path"], "a/b.txt");
        assert_eq!(
            json["retention_summary"]["expires_at"],
            "2027-11-22T10:00:00.000001Z"
        );
        // Ids are text in both encodings (never CBOR byte strings).
        assert_eq!(
            json["package"]["id"],
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(json["package"]["tenant"], "default");
    }

    #[test]
    fn cbor_round_trip_and_digest() {
        let m = sample();
        let cbor = m.to_cbor().unwrap();
        assert_eq!(Manifest::from_cbor(&cbor).unwrap(), m);
        assert_eq!(
            Manifest::digest_of(&cbor).algorithm(),
            crate::identity::Algorithm::Blake3
        );
        let mut other = m.clone();
        other.manifest_version = 2;
        assert!(Manifest::from_cbor(&other.to_cbor().unwrap()).is_err());
    }

    #[test]
    fn supplied_provenance_round_trips_and_its_absence_changes_no_byte() {
        let plain = sample().to_cbor().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&Manifest::jcs(&plain).unwrap()).unwrap();
        assert!(json["provenance"].get("supplied").is_none());

        let mut m = sample();
        let predicate = serde_json::json!({"run": {"id": 7, "steps": ["b", "a"]}, "z": null});
        m.provenance.supplied = Some(
            SuppliedProvenance::new(
                Some("https://example.com/p/v1".into()),
                predicate.clone(),
                1024,
            )
            .unwrap(),
        );
        let cbor = m.to_cbor().unwrap();
        assert_eq!(Manifest::from_cbor(&cbor).unwrap(), m);
        let json: serde_json::Value =
            serde_json::from_slice(&Manifest::jcs(&cbor).unwrap()).unwrap();
        assert_eq!(json["provenance"]["supplied"]["predicate"], predicate);
        assert_eq!(
            json["provenance"]["supplied"]["predicate_type"],
            "https://example.com/p/v1"
        );
    }

    proptest! {
        #[test]
        fn round_trips_with_arbitrary_labels(
            producer in "[^\\x00-\\x1f]{1,20}",
            meta in proptest::collection::btree_map("[a-z0-9.:/_-]{1,10}", "[^\\x00]{0,20}", 0..5),
            size in any::<u64>(),
        ) {
            let mut m = sample();
            m.package.producer = producer;
            m.package.metadata = Metadata::new(meta).unwrap();
            m.files[0].size = size;
            let cbor = m.to_cbor().unwrap();
            prop_assert_eq!(Manifest::from_cbor(&cbor).unwrap(), m);
        }
    }
}

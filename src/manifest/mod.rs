//! Manifests: the document, canonical CBOR (RFC 8949 §4.2.1), the JCS projection (RFC 8785), and
//! the manifest digest (`blake3:` over the CBOR bytes).

pub mod attestation;
pub mod canonical;
mod document;
pub mod provenance;

pub use canonical::{CodecError, from_canonical_cbor, jcs_from_cbor, to_canonical_cbor};
pub use document::{
    FileDigests, MANIFEST_VERSION, Manifest, ManifestFile, ManifestPackage, Provenance,
    RetentionSummary, StorageReceipt,
};
pub use provenance::SuppliedProvenance;

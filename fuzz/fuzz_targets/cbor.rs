//! The canonical CBOR decoder, on manifests and event payloads (what replay and clients read
//! back): never a panic; what decodes re-encodes canonically to bytes that decode the same.
#![no_main]
use artifactstore::events::{FileIngested, PackageCreated, QuotaSet};
use artifactstore::manifest::{from_canonical_cbor, to_canonical_cbor};
use artifactstore::Manifest;
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = from_canonical_cbor::<T>(data) {
        let bytes = to_canonical_cbor(&value).expect("a decoded value encodes");
        let again: T = from_canonical_cbor(&bytes).expect("canonical bytes decode");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::from_cbor(data) {
        let bytes = manifest.to_cbor().expect("a decoded manifest encodes");
        assert_eq!(Manifest::from_cbor(&bytes).expect("its bytes decode"), manifest);
        let _ = Manifest::jcs(&bytes);
    }
    round_trip::<FileIngested>(data);
    round_trip::<PackageCreated>(data);
    round_trip::<QuotaSet>(data);
});

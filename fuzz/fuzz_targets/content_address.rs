//! Content addresses and digests: never a panic; what parses prints back to itself.
#![no_main]
use artifactstore::identity::{ContentAddress, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(address) = text.parse::<ContentAddress>() {
        let again: ContentAddress = address.to_string().parse().unwrap();
        assert_eq!(again, address);
        assert_eq!(address.storage_key(), again.storage_key());
    }
    if let Ok(digest) = Digest::from_hex(text) {
        assert_eq!(Digest::from_hex(&digest.to_hex()).unwrap(), digest);
    }
});

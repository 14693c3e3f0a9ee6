//! The storage file (`ARTIFACTSTORE_STORAGE_FILE`): never a panic, whatever its text.
#![no_main]
use artifactstore::storage::config::StorageConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = StorageConfig::parse(text);
    }
});

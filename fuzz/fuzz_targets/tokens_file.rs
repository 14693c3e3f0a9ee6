//! The tokens file (`ARTIFACTSTORE_TOKENS_FILE`): never a panic, whatever its text.
#![no_main]
use artifactstore::auth::TokenStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(tokens) = TokenStore::check_file_text(text)
    {
        assert!(tokens > 0, "a file that grants nothing is refused");
    }
});

//! Size settings (`5GiB`, `10MB`, `1048576`): never a panic or an overflow; plain digits
//! read as themselves (signs are not sizes: `+2` is refused).
#![no_main]
use artifactstore::config::parse_size;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_size(text);
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(parsed, trimmed.parse::<u64>().ok());
    }
});

//! Relative paths: never a panic; an accepted path can never leave its package, and an input
//! one also meets the spelling rules (NFC, no bidirectional controls).
#![no_main]
use artifactstore::domain::RelativePath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = RelativePath::stored(text) {
        let p = path.as_str();
        assert!(!p.is_empty() && p.len() <= RelativePath::MAX_BYTES);
        assert!(!p.starts_with('/') && !p.contains('\\'));
        assert!(p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        assert!(!p.chars().any(char::is_control));
    }
    if let Ok(path) = RelativePath::new(text) {
        assert!(RelativePath::stored(text).is_ok());
        assert_eq!(path.as_str(), text);
    }
});

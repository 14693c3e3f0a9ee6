//! `Content-Range` of upload chunks: never a panic; what parses is a coherent range.
#![no_main]
use artifactstore::api::parse_content_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(chunk) = parse_content_range(text) {
        let end = chunk.end.expect("a parsed range has an end");
        assert!(chunk.start <= end);
        if let Some(total) = chunk.total {
            assert!(end < total);
        }
    }
});

//! List cursors sent back by clients: never a panic; what decodes encodes to a cursor that
//! decodes to the same position.
#![no_main]
use artifactstore::api::cursor::{
    decode_location_cursor, decode_package_cursor, encode_location_cursor, encode_package_cursor,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sequence) = decode_package_cursor(text) {
        assert_eq!(decode_package_cursor(&encode_package_cursor(sequence)).unwrap(), sequence);
    }
    if let Ok((digest, backend)) = decode_location_cursor(text) {
        let again = decode_location_cursor(&encode_location_cursor(&digest, &backend)).unwrap();
        assert_eq!(again, (digest, backend));
    }
});

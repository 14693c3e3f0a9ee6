//! Opaque list cursors: what the server hands out as `next_cursor` and takes back as
//! `cursor`. Anything else a client sends is refused (422), never trusted.

use crate::error::{Error, Result};
use crate::identity::Digest;
use base64::Engine as _;

fn refused() -> Error {
    Error::InvalidInput("`cursor` is not a cursor this server issued".into())
}

fn decode(cursor: &str) -> Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(refused)
}

/// A position in the package list: the sequence of the last package shown.
pub fn encode_package_cursor(sequence: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("p1:{sequence}"))
}

/// The sequence a package cursor names.
pub fn decode_package_cursor(cursor: &str) -> Result<i64> {
    decode(cursor)?
        .strip_prefix("p1:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(refused)
}

/// A position in a tenant's retrieval records: the last record shown.
pub fn encode_retrieval_cursor(id: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("r1:{id}"))
}

/// The record a retrieval cursor names.
pub fn decode_retrieval_cursor(cursor: &str) -> Result<i64> {
    decode(cursor)?
        .strip_prefix("r1:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(refused)
}

/// A position in the list of stored copies: the last copy shown.
pub fn encode_location_cursor(digest: &Digest, backend: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("l1:{}:{backend}", digest.to_hex()))
}

/// The copy a location cursor names.
pub fn decode_location_cursor(cursor: &str) -> Result<(Digest, String)> {
    let text = decode(cursor)?;
    let (hex, backend) = text
        .strip_prefix("l1:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(refused)?;
    Ok((
        Digest::from_hex(hex).map_err(|_| refused())?,
        backend.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursors_round_trip_and_anything_else_is_refused_cleanly(
            sequence in any::<i64>(),
            bytes in any::<[u8; 32]>(),
            backend in "[a-z0-9:_-]{0,20}",
            junk in ".{0,64}",
        ) {
            prop_assert_eq!(decode_package_cursor(&encode_package_cursor(sequence)).unwrap(), sequence);
            let digest = Digest(bytes);
            let cursor = encode_location_cursor(&digest, &backend);
            prop_assert_eq!(decode_location_cursor(&cursor).unwrap(), (digest, backend));
            // Never a panic, whatever comes in.
            let _ = decode_package_cursor(&junk);
            let _ = decode_location_cursor(&junk);
        }
    }
}

//! Deterministic CBOR (RFC 8949 §4.2.1) over serde, and its JSON (RFC 8785 JCS) projection.
//!
//! ciborium already writes definite lengths and the shortest integer heads; this module adds
//! what it does not do: map keys sorted by their encoded bytes, duplicate keys rejected, and a
//! strict decoder that accepts only bytes that re-encode to themselves.

use ciborium::Value;

/// Why bytes or values could not be (de)coded canonically.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Serialising the value failed.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The bytes are not well-formed CBOR, or not of the expected shape.
    #[error("cannot decode CBOR: {0}")]
    Decode(String),
    /// Well-formed but not in deterministic encoding.
    #[error("CBOR is not in canonical (deterministic) encoding")]
    NotCanonical,
    /// A construct we never emit: floats, tags, non-text map keys, duplicate keys.
    #[error("unsupported CBOR: {0}")]
    Unsupported(&'static str),
}

/// Encodes a serde value as deterministic CBOR.
pub fn to_canonical_cbor<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let value = Value::serialized(value).map_err(|e| CodecError::Encode(e.to_string()))?;
    encode_value(value)
}

/// Encodes a CBOR value deterministically (maps sorted, checks applied).
pub fn encode_value(value: Value) -> Result<Vec<u8>, CodecError> {
    let value = canonicalize(value)?;
    let mut out = Vec::with_capacity(256);
    ciborium::into_writer(&value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes bytes that must already be canonical; anything else is rejected, so one value has
/// exactly one accepted encoding.
pub fn decode_value(bytes: &[u8]) -> Result<Value, CodecError> {
    let mut reader = bytes;
    let value: Value =
        ciborium::from_reader(&mut reader).map_err(|e| CodecError::Decode(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CodecError::Decode(
            "trailing bytes after the CBOR item".into(),
        ));
    }
    if encode_value(value.clone())? != bytes {
        return Err(CodecError::NotCanonical);
    }
    Ok(value)
}

/// Decodes canonical CBOR into a serde value.
pub fn from_canonical_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_value(bytes)?
        .deserialized()
        .map_err(|e| CodecError::Decode(e.to_string()))
}

/// The JSON projection: the same data model as JSON, canonicalised per RFC 8785.
pub fn jcs_from_cbor(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    let json = to_json(&decode_value(bytes)?)?;
    serde_json_canonicalizer::to_vec(&json).map_err(|e| CodecError::Encode(e.to_string()))
}

/// A CBOR value as JSON: text keys only, byte strings as base64url (unpadded), integers must
/// fit I-JSON's exact range.
pub fn to_json(value: &Value) -> Result<serde_json::Value, CodecError> {
    use base64::Engine as _;
    Ok(match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Text(s) => serde_json::Value::String(s.clone()),
        Value::Bytes(b) => {
            serde_json::Value::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
        }
        Value::Integer(i) => {
            let n = i128::from(*i);
            if n.unsigned_abs() > (1u128 << 53) - 1 {
                return Err(CodecError::Unsupported(
                    "integer outside the I-JSON exact range",
                ));
            }
            serde_json::Value::from(n as i64)
        }
        Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Value::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                let Value::Text(key) = k else {
                    return Err(CodecError::Unsupported("map key that is not a text string"));
                };
                map.insert(key.clone(), to_json(v)?);
            }
            serde_json::Value::Object(map)
        }
        Value::Float(_) => return Err(CodecError::Unsupported("floating-point number")),
        Value::Tag(..) => return Err(CodecError::Unsupported("tagged item")),
        _ => return Err(CodecError::Unsupported("unknown CBOR item")),
    })
}

/// Sorts every map by the bytes of its encoded keys (§4.2.1) and rejects what we never emit.
fn canonicalize(value: Value) -> Result<Value, CodecError> {
    Ok(match value {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(canonicalize)
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) => {
            let mut keyed = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                if !matches!(k, Value::Text(_)) {
                    return Err(CodecError::Unsupported("map key that is not a text string"));
                }
                let mut encoded_key = Vec::new();
                ciborium::into_writer(&k, &mut encoded_key)
                    .map_err(|e| CodecError::Encode(e.to_string()))?;
                keyed.push((encoded_key, k, canonicalize(v)?));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(CodecError::Unsupported("duplicate map key"));
            }
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Float(_) => return Err(CodecError::Unsupported("floating-point number")),
        Value::Tag(..) => return Err(CodecError::Unsupported("tagged item")),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn keys_sort_by_encoded_bytes_shorter_first() {
        // "b" (0x61 0x62) sorts before "aa" (0x62 0x61 0x61): length is in the head byte.
        let map = BTreeMap::from([("aa", 1u32), ("b", 2), ("a", 3)]);
        let bytes = to_canonical_cbor(&map).unwrap();
        assert_eq!(
            bytes,
            vec![
                0xa3, 0x61, b'a', 0x03, 0x61, b'b', 0x02, 0x62, b'a', b'a', 0x01
            ]
        );
    }

    #[test]
    fn shortest_integer_heads() {
        for (n, want) in [
            (0u64, vec![0x00]),
            (23, vec![0x17]),
            (24, vec![0x18, 24]),
            (255, vec![0x18, 0xff]),
            (256, vec![0x19, 0x01, 0x00]),
            (65536, vec![0x1a, 0, 1, 0, 0]),
            (1 << 32, vec![0x1b, 0, 0, 0, 1, 0, 0, 0, 0]),
        ] {
            assert_eq!(to_canonical_cbor(&n).unwrap(), want, "{n}");
        }
        assert_eq!(to_canonical_cbor(&-1i64).unwrap(), vec![0x20]);
    }

    #[test]
    fn strict_decoder_rejects_non_canonical_forms() {
        // 1 encoded in two bytes.
        assert!(matches!(
            decode_value(&[0x18, 0x01]),
            Err(CodecError::NotCanonical)
        ));
        // unsorted map {"b":1,"a":2}
        assert!(matches!(
            decode_value(&[0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02]),
            Err(CodecError::NotCanonical)
        ));
        // indefinite-length array [1]
        assert!(matches!(
            decode_value(&[0x9f, 0x01, 0xff]),
            Err(CodecError::NotCanonical)
        ));
        // trailing bytes
        assert!(matches!(
            decode_value(&[0x01, 0x01]),
            Err(CodecError::Decode(_))
        ));
        // float
        assert!(decode_value(&[0xf9, 0x3c, 0x00]).is_err());
        // integer map key
        assert!(decode_value(&[0xa1, 0x01, 0x01]).is_err());
    }

    #[test]
    fn jcs_projection_sorts_and_compacts() {
        let map = BTreeMap::from([("b", "x"), ("a", "é\n")]);
        let cbor = to_canonical_cbor(&map).unwrap();
        assert_eq!(
            jcs_from_cbor(&cbor).unwrap(),
            "{\"a\":\"é\\n\",\"b\":\"x\"}".as_bytes()
        );
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Integer(i.into())),
            any::<u64>().prop_map(|i| Value::Integer(i.into())),
            ".{0,12}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..8).prop_map(|m| {
                    Value::Map(m.into_iter().map(|(k, v)| (Value::Text(k), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip_is_stable(value in arb_value()) {
            let bytes = encode_value(value).unwrap();
            let decoded = decode_value(&bytes).unwrap();
            prop_assert_eq!(encode_value(decoded).unwrap(), bytes);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_value(&bytes);
        }
    }
}

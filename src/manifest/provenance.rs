//! Provenance a producer attaches when it finalizes a package: an SLSA provenance predicate or
//! any JSON object, recorded in the manifest (`provenance.supplied`) and so in the package's
//! signed attestation. The store records the producer's claims as given; it does not check
//! that they are true, only that they have one exact encoding in both of the manifest's forms
//! (canonical CBOR and JCS) and stay within bounds.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The SLSA provenance v1 predicate type: predicates of this type are checked for the members
/// SLSA requires.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";

/// The largest integer magnitude accepted (I-JSON, RFC 7493: exact in every JSON reader).
const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// How deeply objects and arrays may nest inside a predicate.
pub const MAX_DEPTH: usize = 32;

/// Provenance supplied by the producer at finalize.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppliedProvenance {
    /// A URI naming the predicate's format (e.g. `https://slsa.dev/provenance/v1`); absent for
    /// free JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    /// The producer's JSON object.
    pub predicate: Value,
}

impl SuppliedProvenance {
    /// Checks a producer's provenance: `predicate` must be an object whose numbers are
    /// integers of at most 2^53 - 1 in magnitude (floats have no single encoding across CBOR
    /// and JCS), nested at most [`MAX_DEPTH`] deep, at most `max_bytes` in its JCS form; an
    /// SLSA v1 predicate must have the members SLSA requires. The error says what is wrong.
    pub fn new(
        predicate_type: Option<String>,
        predicate: Value,
        max_bytes: u64,
    ) -> Result<Self, ProvenanceError> {
        if let Some(kind) = &predicate_type {
            check_uri(kind).map_err(ProvenanceError::Invalid)?;
        }
        if !predicate.is_object() {
            return Err(ProvenanceError::Invalid(
                "`predicate` must be a JSON object".into(),
            ));
        }
        check_value(&predicate, "predicate", 0).map_err(ProvenanceError::Invalid)?;
        if predicate_type.as_deref() == Some(SLSA_PROVENANCE_V1) {
            check_slsa_v1(&predicate).map_err(ProvenanceError::Invalid)?;
        }
        let supplied = SuppliedProvenance {
            predicate_type,
            predicate,
        };
        let size = serde_json_canonicalizer::to_vec(&supplied)
            .map_err(|e| ProvenanceError::Invalid(format!("cannot be canonicalised: {e}")))?
            .len() as u64;
        if size > max_bytes {
            return Err(ProvenanceError::TooLarge(format!(
                "provenance is {size} bytes in canonical JSON; at most {max_bytes} are accepted \
                 (ARTIFACTSTORE_MAX_PROVENANCE)"
            )));
        }
        Ok(supplied)
    }
}

/// Why supplied provenance is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvenanceError {
    /// Its shape or values.
    #[error("{0}")]
    Invalid(String),
    /// Its size, over the configured bound.
    #[error("{0}")]
    TooLarge(String),
}

/// A URI: a scheme, a colon, and printable text without spaces, at most 256 bytes.
fn check_uri(uri: &str) -> Result<(), String> {
    let scheme = uri.split_once(':').map(|(scheme, _)| scheme);
    let scheme_ok = scheme.is_some_and(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !scheme_ok || uri.len() > 256 || uri.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "`predicate_type` `{}` is not a URI (a scheme, `:`, then at most 256 bytes without \
             spaces), e.g. `{SLSA_PROVENANCE_V1}`",
            uri.escape_debug()
        ));
    }
    Ok(())
}

/// Checks numbers and nesting; on failure, why and the path to the offending value (built
/// only then: walking stays linear in the value's size).
fn check_value(value: &Value, at: &str, depth: usize) -> Result<(), String> {
    walk(value, depth).map_err(|(why, mut path)| {
        path.reverse();
        format!("{at}{} {why}", path.concat())
    })
}

/// What is wrong, and the path to it, innermost segment first.
type Found = (String, Vec<String>);

fn walk(value: &Value, depth: usize) -> Result<(), Found> {
    let inside = |segment: String| {
        move |(why, mut path): Found| {
            path.push(segment);
            (why, path)
        }
    };
    match value {
        Value::Number(n) => {
            let exact = n
                .as_u64()
                .or_else(|| n.as_i64().map(i64::unsigned_abs))
                .is_some_and(|m| m <= MAX_EXACT_INTEGER);
            if !exact {
                return Err((
                    format!(
                        "is {n}: numbers must be integers from -(2^53-1) to 2^53-1 (floats and \
                         larger integers have no single encoding in both CBOR and JCS; send \
                         them as strings)"
                    ),
                    Vec::new(),
                ));
            }
            Ok(())
        }
        Value::Array(items) => {
            nest(depth)?;
            items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| walk(item, depth + 1).map_err(inside(format!("[{i}]"))))
        }
        Value::Object(members) => {
            nest(depth)?;
            members.iter().try_for_each(|(key, member)| {
                walk(member, depth + 1).map_err(inside(format!(".{}", key.escape_debug())))
            })
        }
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

fn nest(depth: usize) -> Result<(), Found> {
    if depth >= MAX_DEPTH {
        return Err((
            format!("nests deeper than {MAX_DEPTH} objects and arrays"),
            Vec::new(),
        ));
    }
    Ok(())
}

/// The members SLSA provenance v1 requires: `buildDefinition.buildType` (a URI),
/// `buildDefinition.externalParameters` (an object) and `runDetails.builder.id` (a URI).
fn check_slsa_v1(predicate: &Value) -> Result<(), String> {
    let missing = |what: &str, kind: &str| {
        format!(
            "an SLSA provenance v1 predicate needs `{what}` ({kind}; https://slsa.dev/spec/v1.0/provenance)"
        )
    };
    let uri = |value: &Value| value.as_str().is_some_and(|s| check_uri(s).is_ok());
    let definition = &predicate["buildDefinition"];
    if !uri(&definition["buildType"]) {
        return Err(missing("buildDefinition.buildType", "a URI"));
    }
    if !definition["externalParameters"].is_object() {
        return Err(missing("buildDefinition.externalParameters", "an object"));
    }
    if !uri(&predicate["runDetails"]["builder"]["id"]) {
        return Err(missing("runDetails.builder.id", "a URI"));
    }
    Ok(())
}

/// Parses JSON text, refusing an object with the same member twice (which JSON parsers
/// resolve differently: what was meant would be ambiguous in a record that must be exact).
pub fn parse_strict_json(bytes: &[u8]) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// A [`Value`] seed whose objects refuse duplicate members.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "member `{}` appears twice in one object",
                    key.escape_debug()
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slsa() -> Value {
        json!({
            "buildDefinition": {
                "buildType": "https://example.com/ci/v1",
                "externalParameters": {"ref": "refs/heads/main"},
            },
            "runDetails": {"builder": {"id": "https://ci.example.com/runner"}},
        })
    }

    #[test]
    fn free_json_and_slsa_are_accepted() {
        let free = SuppliedProvenance::new(None, json!({"pipeline": 42, "ok": true}), 1024);
        assert!(free.is_ok());
        let typed = SuppliedProvenance::new(Some(SLSA_PROVENANCE_V1.into()), slsa(), 1024);
        assert_eq!(typed.unwrap().predicate, slsa());
    }

    #[test]
    fn slsa_predicates_need_what_slsa_requires() {
        for pointer in [
            "/buildDefinition/buildType",
            "/buildDefinition/externalParameters",
            "/runDetails/builder/id",
        ] {
            let mut predicate = slsa();
            let (parent, member) = pointer.rsplit_once('/').unwrap();
            predicate
                .pointer_mut(parent)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(member);
            let err = SuppliedProvenance::new(Some(SLSA_PROVENANCE_V1.into()), predicate, 1024)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&pointer[1..].replace('/', ".")), "{err}");
        }
        // The same predicate under another type is free JSON.
        assert!(
            SuppliedProvenance::new(Some("https://example.com/p".into()), json!({}), 99).is_ok()
        );
    }

    #[test]
    fn numbers_without_one_encoding_are_refused() {
        for bad in [
            json!({"x": 1.5}),
            json!({"x": [1, 2.0]}),
            json!({"x": 9_007_199_254_740_992_u64}),
            json!({"x": -9_007_199_254_740_992_i64}),
        ] {
            let err = SuppliedProvenance::new(None, bad, 1024).unwrap_err();
            assert!(err.to_string().contains("integers"), "{err}");
        }
        assert!(
            SuppliedProvenance::new(None, json!({"x": -9_007_199_254_740_991_i64}), 99).is_ok()
        );
    }

    #[test]
    fn shape_size_depth_and_type_are_bounded() {
        assert!(SuppliedProvenance::new(None, json!([1]), 99).is_err());
        assert!(SuppliedProvenance::new(None, json!("x"), 99).is_err());
        let big = json!({"x": "y".repeat(100)});
        let err = SuppliedProvenance::new(None, big.clone(), 100).unwrap_err();
        assert!(matches!(&err, ProvenanceError::TooLarge(m) if m.contains("at most 100")));
        assert!(SuppliedProvenance::new(None, big, 200).is_ok());
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!({ "a": deep });
        }
        assert!(SuppliedProvenance::new(None, deep.clone(), 1 << 20).is_ok());
        let deeper = json!({ "a": deep });
        assert!(SuppliedProvenance::new(None, deeper, 1 << 20).is_err());
        for uri in [
            "slsa",
            "",
            "1http://x",
            "https://a b",
            &format!("x:{}", "y".repeat(300)),
        ] {
            assert!(
                SuppliedProvenance::new(Some(uri.into()), json!({}), 99).is_err(),
                "{uri}"
            );
        }
    }

    #[test]
    fn strict_parsing_refuses_duplicate_members_anywhere() {
        assert!(parse_strict_json(br#"{"a": 1, "a": 2}"#).is_err());
        assert!(parse_strict_json(br#"{"x": [{"b": 1, "b": 1}]}"#).is_err());
        assert!(parse_strict_json(br#"{"a": 1} x"#).is_err());
        let value = parse_strict_json(br#"{"a": [1, -2, "t", null, true, {"b": 2.5}]}"#).unwrap();
        assert_eq!(value, json!({"a": [1, -2, "t", null, true, {"b": 2.5}]}));
    }
}

//! Package attestations: an in-toto Statement (v1) about a finalized package, in a DSSE
//! envelope signed with Ed25519.
//!
//! The statement's subjects are the package's files (name = relative path, digests `sha256`
//! and `blake3`); an empty package's one subject is its manifest (name `manifest`, digest
//! `blake3`). The predicate ([`PREDICATE_TYPE`]) names the package and carries the manifest's
//! digest and the manifest's provenance. The payload is the statement's JCS (RFC 8785) bytes;
//! the signature covers DSSE's pre-authentication encoding of the payload type and payload.

use super::{Manifest, canonical::CodecError};
use base64::Engine as _;
use serde_json::{Value, json};

/// The envelope's payload type.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The statement's type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate's type.
pub const PREDICATE_TYPE: &str = "https://artifactstore.dev/attestation/package/v1";
/// The media type the envelope is served as.
pub const MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// The statement about the package `manifest` describes, whose canonical CBOR is `cbor`, as JCS
/// bytes.
pub fn statement(manifest: &Manifest, cbor: &[u8]) -> Result<Vec<u8>, CodecError> {
    let digest = Manifest::digest_of(cbor);
    let mut subject: Vec<Value> = manifest
        .files
        .iter()
        .map(|f| {
            json!({
                "name": f.relative_path.as_str(),
                "digest": {"sha256": f.digests.sha256, "blake3": f.digests.blake3},
            })
        })
        .collect();
    if subject.is_empty() {
        subject.push(json!({"name": "manifest", "digest": {"blake3": digest.digest().to_hex()}}));
    }
    let package = &manifest.package;
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "package": {
                "id": package.id.0,
                "tenant": package.tenant.as_str(),
                "producer": package.producer,
                "subject": package.subject,
                "finalized_at": package.finalized_at,
            },
            "manifest": {"digest": digest.to_string(), "media_type": "application/cbor"},
            "provenance": manifest.provenance,
        },
    });
    serde_json_canonicalizer::to_vec(&statement).map_err(|e| CodecError::Encode(e.to_string()))
}

/// DSSE's pre-authentication encoding: what the signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The envelope of `statement` signed by `key_id` with `sign`, as JSON bytes.
pub fn envelope(statement: &[u8], key_id: &str, sign: impl Fn(&[u8]) -> [u8; 64]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = sign(&pae(PAYLOAD_TYPE, statement));
    let envelope = json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": b64.encode(statement),
        "signatures": [{"keyid": key_id, "sig": b64.encode(signature)}],
    });
    serde_json::to_vec(&envelope).expect("a JSON value serialises")
}

/// Why an envelope does not verify.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a DSSE envelope of an in-toto statement.
    #[error("not a DSSE envelope of an in-toto statement: {0}")]
    Malformed(String),
    /// No signature verifies with the key.
    #[error("no signature in the envelope verifies with the key")]
    BadSignature,
}

/// The statement inside `envelope`, once one of its signatures verifies with `verify` (given
/// the signed bytes and the signature).
pub fn open(
    envelope: &[u8],
    verify: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<Value, EnvelopeError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |what: &str| EnvelopeError::Malformed(what.to_owned());
    let envelope: Value = serde_json::from_slice(envelope).map_err(|e| bad(&e.to_string()))?;
    if envelope["payloadType"] != PAYLOAD_TYPE {
        return Err(bad("payloadType is not application/vnd.in-toto+json"));
    }
    let payload = envelope["payload"]
        .as_str()
        .and_then(|p| b64.decode(p).ok())
        .ok_or_else(|| bad("payload is not base64"))?;
    let signed = pae(PAYLOAD_TYPE, &payload);
    let verified = envelope["signatures"]
        .as_array()
        .ok_or_else(|| bad("no signatures"))?
        .iter()
        .filter_map(|s| s["sig"].as_str().and_then(|sig| b64.decode(sig).ok()))
        .any(|sig| verify(&signed, &sig));
    if !verified {
        return Err(EnvelopeError::BadSignature);
    }
    let statement: Value = serde_json::from_slice(&payload).map_err(|e| bad(&e.to_string()))?;
    if statement["_type"] != STATEMENT_TYPE || statement["predicateType"] != PREDICATE_TYPE {
        return Err(bad("not an artifactstore package statement"));
    }
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DSSE specification's own example.
    #[test]
    fn pae_is_dsses() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn an_envelope_opens_only_with_its_signature() {
        let statement = serde_json::to_vec(&json!({
            "_type": STATEMENT_TYPE, "predicateType": PREDICATE_TYPE, "subject": [], "predicate": {}
        }))
        .unwrap();
        let sealed = envelope(&statement, "k", |bytes| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(blake3::hash(bytes).as_bytes());
            sig
        });
        let genuine = |signed: &[u8], sig: &[u8]| sig[..32] == *blake3::hash(signed).as_bytes();
        assert_eq!(open(&sealed, genuine).unwrap()["_type"], STATEMENT_TYPE);
        assert!(matches!(
            open(&sealed, |_, _| false),
            Err(EnvelopeError::BadSignature)
        ));
        let mut tampered: Value = serde_json::from_slice(&sealed).unwrap();
        tampered["payloadType"] = "text/plain".into();
        let tampered = serde_json::to_vec(&tampered).unwrap();
        assert!(matches!(
            open(&tampered, genuine),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}

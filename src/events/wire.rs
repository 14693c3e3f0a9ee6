//! Event pages on the wire: canonical CBOR with each stored payload spliced in unchanged (no
//! re-encoding), or JSON with each payload's JCS projection.

use super::log::StoredEvent;
use crate::manifest::canonical::{decode_value, to_json};

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `{events: [...], next_since}` in canonical CBOR. Map keys are written in canonical order
/// (shorter first, then bytewise); each event's `payload` is the stored canonical CBOR item.
pub fn page_cbor(events: &[StoredEvent], next_since: i64) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + events.iter().map(|e| e.payload.len() + 200).sum::<usize>());
    head(&mut out, 5, 2);
    text(&mut out, "events");
    head(&mut out, 4, events.len() as u64);
    for e in events {
        event_map(&mut out, e, true, e.chain.as_ref());
    }
    text(&mut out, "next_since");
    head(&mut out, 0, next_since as u64);
    out
}

/// One event as a canonical CBOR map: `sequence` only when `with_sequence`, `chain` only when
/// given (lowercase hex, as in JSON). With neither, these are the bytes the event's digest
/// covers in the hash chain ([`super::chain`]).
pub(super) fn event_map(
    out: &mut Vec<u8>,
    e: &StoredEvent,
    with_sequence: bool,
    chain: Option<&[u8; 32]>,
) {
    head(
        out,
        5,
        6 + u64::from(with_sequence) + u64::from(chain.is_some()),
    );
    text(out, "id");
    text(out, &e.id.hyphenated().to_string());
    text(out, "type");
    text(out, &e.event_type);
    if let Some(chain) = chain {
        text(out, "chain");
        text(out, &hex::encode(chain));
    }
    text(out, "tenant");
    text(out, e.tenant.as_str());
    text(out, "payload");
    out.extend_from_slice(&e.payload);
    if with_sequence {
        text(out, "sequence");
        head(out, 0, e.sequence as u64);
    }
    text(out, "subject_id");
    text(out, &e.subject_id.hyphenated().to_string());
    text(out, "occurred_at");
    text(out, &e.occurred_at.to_string());
}

/// The same page as JSON; payloads are their JCS projections.
pub fn page_json(events: &[StoredEvent], next_since: i64) -> crate::Result<serde_json::Value> {
    let events = events
        .iter()
        .map(|e| {
            let payload = to_json(&decode_value(&e.payload)?)?;
            let mut event = serde_json::json!({
                "sequence": e.sequence,
                "id": e.id,
                "type": e.event_type,
                "occurred_at": e.occurred_at.to_string(),
                "tenant": e.tenant.as_str(),
                "subject_id": e.subject_id,
                "payload": payload,
            });
            if let Some(chain) = &e.chain {
                event["chain"] = hex::encode(chain).into();
            }
            Ok(event)
        })
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(serde_json::json!({ "events": events, "next_since": next_since }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TenantId, Timestamp};
    use crate::manifest::canonical::to_canonical_cbor;

    fn event(sequence: i64) -> StoredEvent {
        StoredEvent {
            sequence,
            position: sequence,
            id: uuid::Uuid::nil(),
            event_type: "v1.package.created".into(),
            tenant: TenantId::default_tenant(),
            subject_id: uuid::Uuid::max(),
            occurred_at: Timestamp::parse("2026-11-22T00:00:00Z").unwrap(),
            payload: to_canonical_cbor(&serde_json::json!({"b": 1, "a": [true, "x"]}))
                .unwrap()
                .into(),
            chain: None,
        }
    }

    #[test]
    fn spliced_page_is_canonical_and_equals_the_generic_encoding() {
        let events = vec![event(1), event(300), event(70_000)];
        let bytes = page_cbor(&events, 70_001);
        // The strict decoder accepts only canonical bytes.
        let decoded = decode_value(&bytes).unwrap();
        let json = to_json(&decoded).unwrap();
        assert_eq!(json["next_since"], 70_001);
        assert_eq!(json["events"][1]["sequence"], 300);
        assert_eq!(json["events"][0]["payload"]["a"][1], "x");
        // Same as encoding the JSON form generically and canonically.
        let generic = to_canonical_cbor(&page_json(&events, 70_001).unwrap()).unwrap();
        assert_eq!(bytes, generic);
    }
}

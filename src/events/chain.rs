//! The hash chain over the event log ([ADR 40](../../docs/adr/0040-hash-chained-event-log.md)).
//!
//! Event `n` carries `chain(n) = BLAKE3(chain(n-1) || n as 8 bytes big-endian || digest(n))`,
//! where `chain(0)` is 32 zero bytes and `digest(n)` is BLAKE3 of the event as a canonical CBOR
//! map of its six fields other than its number (`id`, `type`, `tenant`, `payload`,
//! `subject_id`, `occurred_at`), exactly as `GET /events` serves it in CBOR without `sequence`
//! and `chain`. The writer computes the digest (every field is known before the event has a
//! number) and stores it with the event, so the numbering pass, which links events in
//! sequence order under the counter's lock, reads 32 bytes per event rather than its payload.
//! A link commits to the event's digest rather than its bytes, so that a tenant can follow the
//! chain across other tenants' events knowing only their digests, never their contents.

use super::log::StoredEvent;

/// The chain before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The event's canonical bytes without its number (what its digest covers).
pub fn canonical(event: &StoredEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.payload.len() + 200);
    super::wire::event_map(&mut out, event, false, None);
    out
}

/// BLAKE3 of the event's canonical bytes.
pub fn digest(event: &StoredEvent) -> [u8; 32] {
    *blake3::hash(&canonical(event)).as_bytes()
}

/// The chain through event `sequence` of digest `digest`, which follows chain `previous`.
pub fn link(previous: &[u8; 32], sequence: i64, digest: &[u8; 32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous);
    hasher.update(&sequence.to_be_bytes());
    hasher.update(digest);
    *hasher.finalize().as_bytes()
}

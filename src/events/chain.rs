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

/// What a check of the chain found wrong first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The log skips from `after` to `found` (events removed, or never numbered).
    Gap {
        /// The last event in order.
        after: i64,
        /// The next one there.
        found: i64,
    },
    /// Event `sequence` has another chain than its predecessors and contents give: it, or one
    /// before it, was edited, removed or reordered.
    Mismatch {
        /// The first event whose chain is wrong.
        sequence: i64,
    },
    /// Event `sequence` has no chain although later ones do.
    Unchained {
        /// The event.
        sequence: i64,
    },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Gap { after, found } => write!(
                f,
                "the log jumps from event {after} to event {found}: events are missing"
            ),
            Break::Mismatch { sequence } => write!(
                f,
                "event {sequence}'s chain does not follow from the events up to it: it (or the \
                 one before it) was edited, removed or reordered"
            ),
            Break::Unchained { sequence } => write!(f, "event {sequence} has no chain"),
        }
    }
}

/// Follows the chain over consecutive events, from `(last sequence, its chain)`.
#[derive(Debug, Clone)]
pub struct Follower {
    /// The last event followed (0: none yet).
    pub sequence: i64,
    /// The chain through it.
    pub chain: [u8; 32],
}

impl Default for Follower {
    fn default() -> Self {
        Follower {
            sequence: 0,
            chain: GENESIS,
        }
    }
}

impl Follower {
    /// Takes the next event: its recomputed chain must be the one it carries.
    pub fn follow(&mut self, event: &StoredEvent) -> Result<(), Break> {
        if event.sequence != self.sequence + 1 {
            return Err(Break::Gap {
                after: self.sequence,
                found: event.sequence,
            });
        }
        let expected = link(&self.chain, event.sequence, &digest(event));
        match &event.chain {
            None => {
                return Err(Break::Unchained {
                    sequence: event.sequence,
                });
            }
            Some(chain) if *chain != expected => {
                return Err(Break::Mismatch {
                    sequence: event.sequence,
                });
            }
            Some(_) => {}
        }
        self.sequence = event.sequence;
        self.chain = expected;
        Ok(())
    }
}

//! `log verify`: recomputes the event log's hash chain from its contents and checks every
//! signed checkpoint against it.
//!
//! Two checks per event: its stored chain must follow from the stored chain before it and its
//! own contents (which points at the event that was edited: an edit breaks that event's link
//! alone), and the chain recomputed from the first event on (never trusting a stored value)
//! must equal every checkpoint's at its sequence (a rewrite that recomputed every stored chain
//! after an edit still differs from what was signed before it).

use super::checkpoints::{Checkpoint, PublicKey};
use crate::error::Result;
use crate::events::chain::{GENESIS, digest, link};
use std::collections::{BTreeMap, HashMap};

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogProblem {
    /// The log skips from `after` to `found`: events were removed.
    Gap {
        /// The last event before the hole.
        after: i64,
        /// The next event there.
        found: i64,
    },
    /// Event `sequence`'s chain does not follow from its contents and the chain before it:
    /// it was edited, or moved, or follows a removed event.
    Link {
        /// The event.
        sequence: i64,
    },
    /// Numbered events without a chain (the sequencer has not chained them yet: after an
    /// upgrade, it chains old events a bounded number per pass).
    Unchained {
        /// The first.
        from: i64,
        /// The last.
        to: i64,
    },
    /// A checkpoint given for an event the log does not hold (never compared).
    Unmatched {
        /// Its sequence.
        sequence: i64,
        /// Where it comes from.
        by: String,
    },
    /// The log holds fewer events than were numbered or signed: it was truncated.
    Truncated {
        /// Where the log ends.
        ends_at: i64,
        /// What says there were more (`event_counter` or a checkpoint).
        expected: i64,
        /// Which.
        by: String,
    },
    /// A checkpoint's chain is not the chain recomputed through its sequence: the history
    /// before it was rewritten since it was signed.
    Rewritten {
        /// The checkpoint's sequence.
        sequence: i64,
        /// Where it comes from.
        by: String,
    },
    /// A saved event whose digest is not the one the log's links give at its sequence: the
    /// event the copy holds is not the event the log holds there.
    Content {
        /// The event.
        sequence: i64,
    },
    /// A saved event past the end of the saved links (never compared).
    Uncovered {
        /// The event.
        sequence: i64,
    },
    /// Event `sequence` comes after event `after` (or is `after` again): the copy's order was
    /// changed or an entry repeated.
    OutOfOrder {
        /// The event.
        sequence: i64,
        /// The event before it.
        after: i64,
    },
    /// A file of a saved copy ends inside an entry: a save was cut short (the next one
    /// completes it), or the file was cut.
    PartialEntry {
        /// The file.
        file: String,
        /// Where the complete entries end, in bytes.
        after: u64,
    },
    /// No checkpoint covers any of the log checked: nothing in it is signed.
    Unsigned,
    /// A checkpoint whose signature does not verify, or whose key is unknown.
    BadSignature {
        /// The checkpoint's sequence.
        sequence: i64,
        /// Why.
        why: String,
    },
}

impl std::fmt::Display for LogProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogProblem::Gap { after, found } => {
                write!(
                    f,
                    "events {}..={} are missing (removed)",
                    after + 1,
                    found - 1
                )
            }
            LogProblem::Link { sequence } => write!(
                f,
                "event {sequence} does not match its chain: edited, moved, or after a removed event"
            ),
            LogProblem::Unchained { from, to } => {
                write!(f, "events {from}..={to} have no chain yet")
            }
            LogProblem::Unmatched { sequence, by } => write!(
                f,
                "{by} at event {sequence} names an event the log does not hold"
            ),
            LogProblem::Truncated {
                ends_at,
                expected,
                by,
            } => write!(
                f,
                "the log ends at event {ends_at}, but {by} says it reached {expected}: truncated"
            ),
            LogProblem::Rewritten { sequence, by } => write!(
                f,
                "{by} at event {sequence} does not match the log: the history up to it was rewritten"
            ),
            LogProblem::Content { sequence } => write!(
                f,
                "the saved event {sequence} is not the event the log holds there (its digest differs)"
            ),
            LogProblem::Uncovered { sequence } => write!(
                f,
                "the saved event {sequence} is past the saved links: save the copy again"
            ),
            LogProblem::OutOfOrder { sequence, after } => write!(
                f,
                "event {sequence} comes after event {after}: entries reordered or repeated"
            ),
            LogProblem::PartialEntry { file, after } => write!(
                f,
                "{file} ends inside an entry after byte {after}: a save was cut short (`log save` \
                 completes it) or the file was cut"
            ),
            LogProblem::Unsigned => write!(
                f,
                "no checkpoint covers the copy: nothing in it is signed (save it again after the \
                 next checkpoint)"
            ),
            LogProblem::BadSignature { sequence, why } => {
                write!(f, "the checkpoint at event {sequence}: {why}")
            }
        }
    }
}

/// What `log verify` found.
#[derive(Debug, Default)]
pub struct LogReport {
    /// Events read.
    pub events: u64,
    /// Checkpoints checked (stored ones and given ones).
    pub checkpoints: u64,
    /// Everything found wrong, in log order.
    pub problems: Vec<LogProblem>,
    /// The last event read.
    pub last: i64,
    /// The last event a checkpoint signs and the log matches there (`None`: none does).
    pub signed_through: Option<i64>,
    /// Of a saved copy: the tenant's own events compared with their links.
    pub own_events: u64,
}

/// A checkpoint to hold the log against, and what to call it in a report.
pub(super) struct Anchor {
    pub(super) checkpoint: Checkpoint,
    pub(super) by: String,
    /// Its signature verifies with a known key.
    pub(super) verified: bool,
}

/// Checkpoints by their sequence.
pub(super) type Anchors = BTreeMap<i64, Vec<Anchor>>;

/// Events read per query.
const PAGE: i64 = 5_000;

/// Verifies the whole log against its chain, the stored checkpoints and `extra` (e.g. one
/// a client saved), checking each checkpoint's signature with the stored public keys and
/// `extra_keys`, all in one snapshot (a live store's later events are not looked at).
/// `progress` is told how many events were read so far.
pub async fn verify_log(
    pool: &deadpool_postgres::Pool,
    extra: Vec<Checkpoint>,
    extra_keys: Vec<PublicKey>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LogReport> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut report = LogReport::default();
    let stored_keys = super::checkpoints::signing_keys(&*tx).await?;
    let counted: i64 = tx
        .query_one("SELECT last_sequence FROM event_counter", &[])
        .await?
        .get(0);
    let stored = super::checkpoints::checkpoints(&*tx, 0, i64::MAX).await?;
    let checkpoints = stored
        .into_iter()
        .map(|c| (c, "the stored checkpoint"))
        .chain(extra.into_iter().map(|c| (c, "the given checkpoint")));
    let keys = stored_keys.into_iter().chain(extra_keys);
    let anchors = anchors(checkpoints, keys, &mut report);
    let mut walk = Walk::default();
    walk.all(&tx, &mut report, &anchors, progress).await?;
    tx.commit().await?;
    walk.finish(
        &mut report,
        &anchors,
        Some((counted, "the event counter".to_owned())),
    );
    Ok(report)
}

/// The checkpoints to hold a log against, by sequence, each one's signature checked with
/// `keys` (a bad one is reported).
pub(super) fn anchors<'a>(
    checkpoints: impl IntoIterator<Item = (Checkpoint, &'a str)>,
    keys: impl IntoIterator<Item = PublicKey>,
    report: &mut LogReport,
) -> Anchors {
    let keys: HashMap<String, [u8; 32]> = keys
        .into_iter()
        .map(|key| (key.key_id, key.public_key))
        .collect();
    let mut anchors = Anchors::new();
    for (checkpoint, by) in checkpoints {
        report.checkpoints += 1;
        let verified = match signature_ok(&checkpoint, &keys) {
            Ok(()) => true,
            Err(why) => {
                report.problems.push(LogProblem::BadSignature {
                    sequence: checkpoint.sequence,
                    why,
                });
                false
            }
        };
        anchors
            .entry(checkpoint.sequence)
            .or_default()
            .push(Anchor {
                checkpoint,
                by: by.to_owned(),
                verified,
            });
    }
    anchors
}

/// Where a walk over the log is.
pub(super) struct Walk {
    /// The last event read.
    pub(super) last: i64,
    /// The stored chain of the last event read.
    stored_before: [u8; 32],
    /// The chain recomputed from the first event, trusting no stored value.
    recomputed: [u8; 32],
    /// Events without a chain, as a run not yet reported.
    unchained: Option<(i64, i64)>,
    /// The checkpoints' sequences met.
    matched: std::collections::HashSet<i64>,
}

impl Default for Walk {
    fn default() -> Self {
        Walk {
            last: 0,
            stored_before: GENESIS,
            recomputed: GENESIS,
            unchained: None,
            matched: Default::default(),
        }
    }
}

impl Walk {
    /// Reads every event in order, checking links and anchors.
    async fn all(
        &mut self,
        tx: &deadpool_postgres::Transaction<'_>,
        report: &mut LogReport,
        anchors: &Anchors,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        loop {
            // By count, and by bytes: a finalize event carries its package's manifest.
            let (page, cut) = crate::events::read_page(
                &**tx,
                self.last,
                i64::MAX,
                PAGE,
                crate::events::MAINTENANCE_PAGE_BYTES,
                None,
                None,
            )
            .await?;
            for event in &page {
                self.step(event.sequence, &digest(event), event.chain, report, anchors);
            }
            progress(report.events);
            if !cut && (page.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// After the last event: what is still unchained, where the log should have reached
    /// (`counted`, and the last checkpoint), and the checkpoints never met.
    pub(super) fn finish(
        &mut self,
        report: &mut LogReport,
        anchors: &Anchors,
        counted: Option<(i64, String)>,
    ) {
        if let Some((from, to)) = self.unchained.take() {
            report.problems.push(LogProblem::Unchained { from, to });
        }
        let ends_at = self.last;
        report.last = ends_at;
        let mut expected: Vec<_> = counted.into_iter().collect();
        if let Some((&last, found)) = anchors.last_key_value() {
            expected.push((last, found[0].by.clone()));
        }
        for (expected, by) in expected {
            if expected > ends_at {
                report.problems.push(LogProblem::Truncated {
                    ends_at,
                    expected,
                    by,
                });
            }
        }
        for (sequence, found) in anchors {
            if !self.matched.contains(sequence) && *sequence <= ends_at {
                for anchor in found {
                    report.problems.push(LogProblem::Unmatched {
                        sequence: *sequence,
                        by: anchor.by.clone(),
                    });
                }
            }
        }
    }

    /// Event `sequence`, of digest `own` and stored chain `chain`.
    pub(super) fn step(
        &mut self,
        sequence: i64,
        own: &[u8; 32],
        chain: Option<[u8; 32]>,
        report: &mut LogReport,
        anchors: &Anchors,
    ) {
        if sequence <= self.last {
            report.problems.push(LogProblem::OutOfOrder {
                sequence,
                after: self.last,
            });
        } else if sequence != self.last + 1 {
            report.problems.push(LogProblem::Gap {
                after: self.last,
                found: sequence,
            });
        }
        self.recomputed = link(&self.recomputed, sequence, own);
        match chain {
            None => {
                self.unchained = Some(match self.unchained {
                    Some((from, _)) => (from, sequence),
                    None => (sequence, sequence),
                });
            }
            Some(chain) => {
                if let Some((from, to)) = self.unchained.take() {
                    report.problems.push(LogProblem::Unchained { from, to });
                }
                if chain != link(&self.stored_before, sequence, own) {
                    report.problems.push(LogProblem::Link { sequence });
                }
                self.stored_before = chain;
            }
        }
        for anchor in anchors.get(&sequence).into_iter().flatten() {
            self.matched.insert(sequence);
            if anchor.checkpoint.chain == hex::encode(self.recomputed) {
                if anchor.verified {
                    report.signed_through = Some(sequence);
                }
            } else {
                report.problems.push(LogProblem::Rewritten {
                    sequence,
                    by: anchor.by.clone(),
                });
            }
        }
        self.last = sequence;
        report.events += 1;
    }
}

/// Whether the checkpoint's signature verifies with a known key.
fn signature_ok(
    checkpoint: &Checkpoint,
    keys: &HashMap<String, [u8; 32]>,
) -> std::result::Result<(), String> {
    let key = keys
        .get(&checkpoint.key_id)
        .ok_or_else(|| format!("signed by an unknown key {}", checkpoint.key_id))?;
    let signature =
        hex::decode(&checkpoint.signature).map_err(|_| "its signature is not hex".to_owned())?;
    if crate::signing::verify(key, checkpoint.signed_text().as_bytes(), &signature) {
        Ok(())
    } else {
        Err(format!(
            "the signature does not verify with key {}",
            checkpoint.key_id
        ))
    }
}

//! A saved copy of the event log, as a tenant can keep it (`artifactstore log save DIR`, any
//! token) and verify it offline, without the server or its database (`artifactstore log
//! verify --copy DIR`). A directory of four files:
//!
//! - `links.jsonl`: every event's `{"sequence", "digest", "chain"}`, one JSON object per line,
//!   in order (`GET /log/links`: no event's contents, every tenant's events);
//! - `events.cbor`: the tenant's own events as `GET /events` serves them in CBOR, one map per
//!   item, as a CBOR sequence (RFC 8742);
//! - `checkpoints.jsonl`: signed checkpoints, one per line (`GET /log/checkpoints`);
//! - `keys.json`: the public keys as `GET /keys` answered when the copy was last saved.
//!
//! Verifying recomputes the chain from the links, every saved event's digest from its bytes
//! (it must be the digest the links give at its sequence), and every checkpoint's chain and
//! signature. Files only grow: saving again appends what is new, and a save cut short leaves
//! at most a partial last line or item, which the next save drops (verifying reports it, and
//! never changes the copy). A save holds `.lock` exclusively, a verification shared.

use super::checkpoints::{Checkpoint, PublicKey};
use super::log_verify::{LogProblem, LogReport, Walk, anchors};
use crate::manifest::canonical::encode_value;
use ciborium::Value;
use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::Path;

/// The chain's links.
pub const LINKS_FILE: &str = "links.jsonl";
/// The tenant's events, a CBOR sequence.
pub const EVENTS_FILE: &str = "events.cbor";
/// Signed checkpoints.
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
/// Public keys.
pub const KEYS_FILE: &str = "keys.json";

/// Why a saved copy cannot be read or written: the file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CopyError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl CopyError {
    /// `message` about `path`.
    pub fn new(path: &Path, message: impl std::fmt::Display) -> Self {
        CopyError {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, CopyError>;

/// One event's place in the chain, as `GET /log/links` gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedLink {
    /// The event's sequence.
    pub sequence: i64,
    /// BLAKE3 of its canonical CBOR without `sequence` and `chain`, hex.
    pub digest: String,
    /// The chain through it, hex.
    pub chain: String,
}

/// A served event map's sequence and digest (BLAKE3 of the map without `sequence` and
/// `chain`, re-encoded canonically: the bytes the chain commits to).
pub fn served_event_digest(event: &Value) -> std::result::Result<(i64, [u8; 32]), String> {
    let Value::Map(fields) = event else {
        return Err("an event is not a CBOR map".into());
    };
    let sequence = fields
        .iter()
        .find(|(k, _)| k.as_text() == Some("sequence"))
        .and_then(|(_, v)| v.as_integer())
        .and_then(|n| i64::try_from(n).ok())
        .ok_or("an event without a sequence")?;
    let content: Vec<_> = fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_text(), Some("sequence" | "chain")))
        .cloned()
        .collect();
    let bytes = encode_value(Value::Map(content))
        .map_err(|e| format!("event {sequence} cannot be re-encoded: {e}"))?;
    Ok((sequence, *blake3::hash(&bytes).as_bytes()))
}

/// A file's bytes; none when it does not exist.
fn read_or_empty(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(CopyError::new(path, e)),
    }
}

/// The entries of a copy's file (none when it does not exist), and where a partial last
/// entry begins when a save was cut short in it.
pub struct Entries<T> {
    /// The complete entries, in file order.
    pub complete: Vec<T>,
    /// The length of the complete entries, when a partial one follows them.
    pub partial_after: Option<u64>,
}

impl<T> Entries<T> {
    /// The complete entries, after cutting a partial last one off the file (only `log save`
    /// does this, holding the copy's lock: verifying never changes the copy).
    pub fn repaired(self, path: &Path) -> Result<Vec<T>> {
        if let Some(length) = self.partial_after {
            truncate(path, length)?;
        }
        Ok(self.complete)
    }
}

/// The lines of a JSON-lines file.
pub fn lines(path: &Path) -> Result<Entries<String>> {
    let bytes = read_or_empty(path)?;
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let complete = bytes[..whole]
        .lines()
        .map(|line| line.map_err(|e| CopyError::new(path, e)))
        .collect::<Result<_>>()?;
    Ok(Entries {
        complete,
        partial_after: (whole < bytes.len()).then_some(whole as u64),
    })
}

/// The items of a CBOR-sequence file, each in canonical encoding (anything else is refused:
/// the copy holds the bytes as served).
pub fn items(path: &Path) -> Result<Entries<Value>> {
    let bytes = read_or_empty(path)?;
    let mut complete = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let start = bytes.len() - rest.len();
        match ciborium::from_reader::<Value, _>(&mut rest) {
            Ok(item) => {
                let end = bytes.len() - rest.len();
                if encode_value(item.clone()).ok().as_deref() != Some(&bytes[start..end]) {
                    return Err(CopyError::new(
                        path,
                        format!("the item at byte {start} is not in canonical CBOR"),
                    ));
                }
                complete.push(item);
            }
            // The bytes end inside an item.
            Err(ciborium::de::Error::Io(_)) => {
                return Ok(Entries {
                    complete,
                    partial_after: Some(start as u64),
                });
            }
            Err(e) => return Err(CopyError::new(path, format!("not a CBOR sequence: {e}"))),
        }
    }
    Ok(Entries {
        complete,
        partial_after: None,
    })
}

/// Holds the copy's lock file (`.lock`): exclusively while saving, shared while verifying.
pub struct CopyLock(#[allow(dead_code)] Option<std::fs::File>);

impl CopyLock {
    /// The exclusive lock, to save into `dir` (refused at once while another save or a
    /// verification holds it).
    pub fn exclusive(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CopyError::new(&path, e))?;
        file.try_lock().map_err(|_| {
            CopyError::new(
                &path,
                "another `log save` or `log verify` is using this copy",
            )
        })?;
        Ok(CopyLock(Some(file)))
    }

    /// A shared lock, to read `dir` (waits for a save to finish; none when the copy has no
    /// lock file, e.g. on read-only media it was copied to).
    pub fn shared(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        match std::fs::File::open(&path) {
            Ok(file) => {
                file.lock_shared().map_err(|e| CopyError::new(&path, e))?;
                Ok(CopyLock(Some(file)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CopyLock(None)),
            Err(e) => Err(CopyError::new(&path, e)),
        }
    }
}

fn truncate(path: &Path, length: u64) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(length))
        .map_err(|e| CopyError::new(path, format!("dropping a partial last entry: {e}")))
}

/// Appends `bytes` to `path` and syncs it.
pub fn append(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_data()
        })
        .map_err(|e| CopyError::new(path, e))
}

/// The keys saved in the copy (`keys.json`, as `GET /keys` answers).
pub fn saved_keys(dir: &Path) -> Result<Vec<PublicKey>> {
    let path = dir.join(KEYS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| CopyError::new(&path, e))?;
    let listed: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CopyError::new(&path, format!("not JSON: {e}")))?;
    let mut keys = Vec::new();
    for key in listed["keys"].as_array().into_iter().flatten() {
        let pem = key["public_key_pem"]
            .as_str()
            .ok_or_else(|| CopyError::new(&path, "a key without public_key_pem"))?;
        let public_key =
            crate::signing::public_key_from_pem(pem).map_err(|e| CopyError::new(&path, e))?;
        keys.push(PublicKey {
            key_id: crate::signing::key_id(&public_key),
            public_key,
            first_used: crate::domain::Timestamp::from_datetime(time::OffsetDateTime::UNIX_EPOCH),
        });
    }
    Ok(keys)
}

/// Verifies the copy in `dir`: its links against each other, its events against its links,
/// its checkpoints and `extra` against the chain and `keys`. `progress` is told how many
/// links were checked so far. Reads only: the copy is never changed.
pub fn verify_copy(
    dir: &Path,
    extra: Vec<Checkpoint>,
    keys: Vec<PublicKey>,
    progress: &dyn Fn(u64),
) -> Result<LogReport> {
    let _lock = CopyLock::shared(dir)?;
    let mut report = LogReport::default();
    let links_path = dir.join(LINKS_FILE);
    if !links_path.exists() {
        return Err(CopyError::new(
            &links_path,
            "no such file (is this a saved copy?)",
        ));
    }
    let checkpoints_path = dir.join(CHECKPOINTS_FILE);
    let saved_checkpoints = lines(&checkpoints_path)?;
    let mut saved = Vec::new();
    for (n, line) in saved_checkpoints.complete.iter().enumerate() {
        let checkpoint = serde_json::from_str::<Checkpoint>(line)
            .map_err(|e| CopyError::new(&checkpoints_path, format!("line {}: {e}", n + 1)))?;
        saved.push(checkpoint);
    }
    let checkpoints = saved
        .into_iter()
        .map(|c| (c, "the saved checkpoint"))
        .chain(extra.into_iter().map(|c| (c, "the given checkpoint")));
    let anchors = anchors(checkpoints, keys, &mut report);
    let events_path = dir.join(EVENTS_FILE);
    let saved_events = items(&events_path)?;
    let mut own = own_events(&events_path, &saved_events.complete, &mut report)?;
    let saved_links = lines(&links_path)?;
    let mut walk = Walk::default();
    for (n, line) in saved_links.complete.iter().enumerate() {
        let bad = |e: String| CopyError::new(&links_path, format!("line {}: {e}", n + 1));
        let saved: SavedLink = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let digest = hex32(&saved.digest).map_err(bad)?;
        let chain = hex32(&saved.chain).map_err(bad)?;
        if let Some(mine) = own.remove(&saved.sequence) {
            report.own_events += 1;
            if mine != digest {
                report.problems.push(LogProblem::Content {
                    sequence: saved.sequence,
                });
            }
        }
        walk.step(saved.sequence, &digest, Some(chain), &mut report, &anchors);
        if report.events % 10_000 == 0 {
            progress(report.events);
        }
    }
    progress(report.events);
    walk.finish(&mut report, &anchors, None);
    // Saved events inside the links' range were compared, or fall in a hole already
    // reported as a gap; those past their end were never compared.
    for sequence in own.into_keys().filter(|s| *s > walk.last) {
        report.problems.push(LogProblem::Uncovered { sequence });
    }
    for (path, entries) in [
        (&checkpoints_path, saved_checkpoints.partial_after),
        (&links_path, saved_links.partial_after),
        (&events_path, saved_events.partial_after),
    ] {
        if let Some(after) = entries {
            report.problems.push(LogProblem::PartialEntry {
                file: path.display().to_string(),
                after,
            });
        }
    }
    if report.signed_through.is_none() {
        report.problems.push(LogProblem::Unsigned);
    }
    Ok(report)
}

/// The saved events' digests by sequence; sequences must rise from 1 (a repeated or
/// reordered event is reported, and not compared).
fn own_events(
    path: &Path,
    events: &[Value],
    report: &mut LogReport,
) -> Result<BTreeMap<i64, [u8; 32]>> {
    let mut own = BTreeMap::new();
    let mut last = 0;
    for item in events {
        let (sequence, digest) = served_event_digest(item).map_err(|e| CopyError::new(path, e))?;
        if sequence <= last {
            report.problems.push(LogProblem::OutOfOrder {
                sequence,
                after: last,
            });
            continue;
        }
        last = sequence;
        own.insert(sequence, digest);
    }
    Ok(own)
}

fn hex32(text: &str) -> std::result::Result<[u8; 32], String> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| format!("`{}` is not 32 bytes of hex", text.escape_debug()))
}

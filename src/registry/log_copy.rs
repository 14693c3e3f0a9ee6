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

/// The longest line a copy's JSON-lines file may hold (a link or a checkpoint is a few
/// hundred bytes).
const MAX_LINE: u64 = 64 << 10;

/// The largest event a copy may hold (an event's payload is bounded by the server's JSON body
/// and provenance limits; a finalize event carries its manifest).
pub const MAX_ITEM: u64 = 256 << 20;

/// A copy's file read front to back, one entry at a time (memory stays flat whatever its
/// length): none when it does not exist.
fn open_or_empty(path: &Path) -> Result<Option<std::io::BufReader<std::fs::File>>> {
    match std::fs::File::open(path) {
        Ok(file) => Ok(Some(std::io::BufReader::new(file))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CopyError::new(path, e)),
    }
}

/// The lines of a JSON-lines file, in order. Once it is exhausted, `partial_after` says
/// where a partial last line (a save cut short in it) begins, if one does.
pub struct Lines {
    path: std::path::PathBuf,
    reader: Option<std::io::BufReader<std::fs::File>>,
    offset: u64,
    number: u64,
    /// The length of the complete lines, when a partial one follows them.
    pub partial_after: Option<u64>,
}

impl Lines {
    /// The lines of `path` (none when it does not exist).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Lines {
            path: path.to_owned(),
            reader: open_or_empty(path)?,
            offset: 0,
            number: 0,
            partial_after: None,
        })
    }

    /// The next complete line and its number (from 1).
    pub fn next_line(&mut self) -> Result<Option<(u64, String)>> {
        let Some(reader) = &mut self.reader else {
            return Ok(None);
        };
        let mut line = Vec::new();
        let read = std::io::Read::take(&mut *reader, MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| CopyError::new(&self.path, e))?;
        if read == 0 {
            self.reader = None;
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            if read as u64 > MAX_LINE {
                return Err(CopyError::new(
                    &self.path,
                    format!("line {} is longer than {MAX_LINE} bytes", self.number + 1),
                ));
            }
            self.partial_after = Some(self.offset);
            self.reader = None;
            return Ok(None);
        }
        self.offset += read as u64;
        self.number += 1;
        line.pop();
        let text = String::from_utf8(line).map_err(|_| {
            CopyError::new(&self.path, format!("line {} is not UTF-8", self.number))
        })?;
        Ok(Some((self.number, text)))
    }

    /// The last complete line, after cutting a partial one off the file (only `log save`
    /// does this, holding the copy's lock: verifying never changes the copy).
    pub fn last_repaired(path: &Path) -> Result<Option<String>> {
        let mut lines = Lines::open(path)?;
        let mut last = None;
        while let Some((_, line)) = lines.next_line()? {
            last = Some(line);
        }
        if let Some(length) = lines.partial_after {
            truncate(path, length)?;
        }
        Ok(last)
    }
}

/// Reads through to the inner reader, keeping the bytes of the item being read (at most
/// [`MAX_ITEM`]), so that each item can be checked against its canonical encoding.
struct Kept<R> {
    inner: R,
    bytes: Vec<u8>,
    over: bool,
}

impl<R: std::io::Read> std::io::Read for Kept<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes.len() as u64 >= MAX_ITEM {
            self.over = true;
            return Err(std::io::Error::other("item too large"));
        }
        let n = self.inner.read(buf)?;
        self.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The items of a CBOR-sequence file, in order, each in canonical encoding (anything else is
/// refused: the copy holds the bytes as served). Once it is exhausted, `partial_after` says
/// where a partial last item begins, if one does.
pub struct Items {
    path: std::path::PathBuf,
    reader: Option<Kept<std::io::BufReader<std::fs::File>>>,
    offset: u64,
    /// The length of the complete items, when a partial one follows them.
    pub partial_after: Option<u64>,
}

impl Items {
    /// The items of `path` (none when it does not exist).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Items {
            path: path.to_owned(),
            reader: open_or_empty(path)?.map(|inner| Kept {
                inner,
                bytes: Vec::new(),
                over: false,
            }),
            offset: 0,
            partial_after: None,
        })
    }

    /// The next complete item.
    pub fn next_item(&mut self) -> Result<Option<Value>> {
        let Some(reader) = &mut self.reader else {
            return Ok(None);
        };
        reader.bytes.clear();
        if std::io::BufRead::fill_buf(&mut reader.inner)
            .map_err(|e| CopyError::new(&self.path, e))?
            .is_empty()
        {
            self.reader = None;
            return Ok(None);
        }
        match ciborium::from_reader::<Value, _>(&mut *reader) {
            Ok(item) => {
                // ciborium reads exactly the item: what was kept is its bytes.
                if encode_value(item.clone()).ok().as_deref() != Some(&reader.bytes[..]) {
                    return Err(CopyError::new(
                        &self.path,
                        format!("the item at byte {} is not in canonical CBOR", self.offset),
                    ));
                }
                self.offset += reader.bytes.len() as u64;
                Ok(Some(item))
            }
            Err(_) if reader.over => Err(CopyError::new(
                &self.path,
                format!("the item at byte {} is over {MAX_ITEM} bytes", self.offset),
            )),
            // The bytes end inside an item. (Any other read error is an error: taken for a
            // partial item, `last_repaired` would cut the copy there.)
            Err(ciborium::de::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.partial_after = Some(self.offset);
                self.reader = None;
                Ok(None)
            }
            Err(ciborium::de::Error::Io(e)) => Err(CopyError::new(&self.path, e)),
            Err(e) => Err(CopyError::new(
                &self.path,
                format!("not a CBOR sequence: {e}"),
            )),
        }
    }

    /// The last complete item, after cutting a partial one off the file (only `log save`).
    pub fn last_repaired(path: &Path) -> Result<Option<Value>> {
        let mut items = Items::open(path)?;
        let mut last = None;
        while let Some(item) = items.next_item()? {
            last = Some(item);
        }
        if let Some(length) = items.partial_after {
            truncate(path, length)?;
        }
        Ok(last)
    }
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
/// links were checked so far. Reads only: the copy is never changed. Links and events are
/// read side by side, one entry at a time (both are in sequence order), so memory stays flat
/// whatever the copy's length; checkpoints are held, one per few minutes of the log.
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
    let mut saved_checkpoints = Lines::open(&checkpoints_path)?;
    let mut saved = Vec::new();
    while let Some((n, line)) = saved_checkpoints.next_line()? {
        let checkpoint = serde_json::from_str::<Checkpoint>(&line)
            .map_err(|e| CopyError::new(&checkpoints_path, format!("line {n}: {e}")))?;
        saved.push(checkpoint);
    }
    let checkpoints = saved
        .into_iter()
        .map(|c| (c, "the saved checkpoint"))
        .chain(extra.into_iter().map(|c| (c, "the given checkpoint")));
    let anchors = anchors(checkpoints, keys, &mut report);
    let mut own = OwnEvents::open(&dir.join(EVENTS_FILE))?;
    let mut links = Lines::open(&links_path)?;
    let mut walk = Walk::default();
    while let Some((n, line)) = links.next_line()? {
        let bad = |e: String| CopyError::new(&links_path, format!("line {n}: {e}"));
        let saved: SavedLink = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let digest = hex32(&saved.digest).map_err(bad)?;
        let chain = hex32(&saved.chain).map_err(bad)?;
        // Saved events before this link fall in a hole the walk reports as a gap.
        while own
            .peek(&mut report)?
            .is_some_and(|(s, _)| s < saved.sequence)
        {
            own.take();
        }
        if let Some((_, mine)) = own.peek(&mut report)?.filter(|(s, _)| *s == saved.sequence) {
            own.take();
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
    // Saved events past the links' end were never compared.
    while let Some((sequence, _)) = own.peek(&mut report)? {
        own.take();
        if sequence > walk.last {
            report.problems.push(LogProblem::Uncovered { sequence });
        }
    }
    for (path, partial) in [
        (&checkpoints_path, saved_checkpoints.partial_after),
        (&links_path, links.partial_after),
        (&own.path, own.items.partial_after),
    ] {
        if let Some(after) = partial {
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

/// The saved events' sequences and digests, in order; sequences must rise (a repeated or
/// reordered event is reported, and not compared).
struct OwnEvents {
    path: std::path::PathBuf,
    items: Items,
    last: i64,
    next: Option<(i64, [u8; 32])>,
}

impl OwnEvents {
    fn open(path: &Path) -> Result<Self> {
        Ok(OwnEvents {
            path: path.to_owned(),
            items: Items::open(path)?,
            last: 0,
            next: None,
        })
    }

    /// The next event in order, read if need be.
    fn peek(&mut self, report: &mut LogReport) -> Result<Option<(i64, [u8; 32])>> {
        while self.next.is_none() {
            let Some(item) = self.items.next_item()? else {
                return Ok(None);
            };
            let (sequence, digest) =
                served_event_digest(&item).map_err(|e| CopyError::new(&self.path, e))?;
            if sequence <= self.last {
                report.problems.push(LogProblem::OutOfOrder {
                    sequence,
                    after: self.last,
                });
                continue;
            }
            self.last = sequence;
            self.next = Some((sequence, digest));
        }
        Ok(self.next)
    }

    /// Moves past the event [`Self::peek`] gave.
    fn take(&mut self) {
        self.next = None;
    }
}

fn hex32(text: &str) -> std::result::Result<[u8; 32], String> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| format!("`{}` is not 32 bytes of hex", text.escape_debug()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stream_and_find_a_partial_tail_without_changing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        let mut lines = Lines::open(&path).unwrap();
        assert_eq!(lines.next_line().unwrap(), Some((1, "{\"a\":1}".into())));
        assert_eq!(lines.next_line().unwrap(), Some((2, "{\"b\":2}".into())));
        assert_eq!(lines.next_line().unwrap(), None);
        assert_eq!(lines.partial_after, Some(16));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 20);
        assert_eq!(Lines::last_repaired(&path).unwrap().unwrap(), "{\"b\":2}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        // A line past the bound is refused, not read whole.
        std::fs::write(&path, vec![b'x'; MAX_LINE as usize + 10]).unwrap();
        let err = Lines::open(&path).unwrap().next_line().unwrap_err();
        assert!(err.message.contains("longer than"), "{err}");
        // No file: no lines.
        let mut none = Lines::open(&dir.path().join("absent")).unwrap();
        assert_eq!(none.next_line().unwrap(), None);
    }

    #[test]
    fn items_stream_canonical_cbor_and_find_a_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.cbor");
        let one = encode_value(Value::Map(vec![(
            Value::Text("sequence".into()),
            Value::Integer(1.into()),
        )]))
        .unwrap();
        let two = encode_value(Value::Text("two".into())).unwrap();
        std::fs::write(&path, [&one[..], &two[..], &two[..2]].concat()).unwrap();
        let mut items = Items::open(&path).unwrap();
        assert!(items.next_item().unwrap().is_some());
        assert_eq!(items.next_item().unwrap(), Some(Value::Text("two".into())));
        assert_eq!(items.next_item().unwrap(), None);
        assert_eq!(items.partial_after, Some((one.len() + two.len()) as u64));
        // The integer 1 in two bytes instead of one: the same value, not canonical.
        std::fs::write(&path, [0x18, 0x01]).unwrap();
        let err = Items::open(&path).unwrap().next_item().unwrap_err();
        assert!(err.message.contains("not in canonical CBOR"), "{err}");
    }
}

//! The value parsers of single settings: ranged numbers, sizes, the database URL, the
//! metrics listener's address, paths.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A whole number from `MIN` to `MAX`; whitespace around it is ignored (a value read from a
/// file often ends in a newline).
pub fn within<const MIN: u64, const MAX: u64>(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if (MIN..=MAX).contains(&n) => Ok(n),
        _ if MAX == u64::MAX => Err(format!("`{text}` is not a whole number of at least {MIN}")),
        _ => Err(format!(
            "`{text}` is not a whole number from {MIN} to {MAX}"
        )),
    }
}

/// A size in bytes, written as a number or with a unit: `1048576`, `500MiB`, `5GiB`, `10MB`
/// (binary units for `K/M/G/T[iB]`, decimal for `KB/MB/GB/TB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_size(text)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is not a size like 5GiB, 10MB or 1048576"))
    }
}

impl ByteSize {
    /// A size of at least one byte.
    pub fn positive(text: &str) -> Result<Self, String> {
        match text.parse()? {
            ByteSize(0) => Err("must be at least one byte".into()),
            size => Ok(size),
        }
    }
}

/// A PostgreSQL URL, parsed with its TLS set-up (a `sslrootcert` file that cannot be read fails
/// at start, not at the first connection).
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    /// The URL may hold a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

pub(super) fn database_url(text: &str) -> Result<DatabaseUrl, String> {
    crate::db::target(text).map_err(|e| format!("not a usable PostgreSQL URL: {e}"))?;
    Ok(DatabaseUrl(text.to_owned()))
}

/// Where the metrics listener listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics listener.
    Off,
    /// The default address, [`DEFAULT_METRICS_LISTEN`]: taken only if free.
    Default,
    /// An address given: it must be free.
    At(SocketAddr),
}

/// The metrics listener's default address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

pub(super) fn metrics_listen(text: &str) -> Result<MetricsListen, String> {
    if text.trim().is_empty() {
        return Ok(MetricsListen::Off);
    }
    text.parse()
        .map(MetricsListen::At)
        .map_err(|e| format!("`{text}` is not an address (host:port) or empty: {e}"))
}

pub(super) fn non_empty_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(PathBuf::from(text))
}

/// Parses `1048576`, `500MiB`, `5GiB`, `10MB`, `1T`... (binary units for `K/M/G/T[iB]`, decimal
/// for `KB/MB/GB/TB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

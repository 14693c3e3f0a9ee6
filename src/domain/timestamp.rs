//! Timestamps with microsecond precision (PostgreSQL's), and an injectable clock.

use crate::error::{Error, Result};
use std::fmt;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// A UTC instant truncated to microseconds, printed as `2026-11-22T10:52:51.123456Z`: one text
/// form, so events, manifests and views round-trip byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Truncates to microseconds and converts to UTC.
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let dt = dt.to_offset(time::UtcOffset::UTC);
        let micros = dt.microsecond();
        Timestamp(dt.replace_microsecond(micros).expect("valid microsecond"))
    }

    /// Parses the canonical text form (any RFC 3339 input is accepted and normalised).
    pub fn parse(text: &str) -> Result<Self> {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map(Self::from_datetime)
            .map_err(|e| Error::InvalidInput(format!("`{text}` is not an RFC 3339 timestamp: {e}")))
    }

    /// The instant.
    pub fn as_datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// This instant plus whole seconds, if representable.
    pub fn plus_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .checked_add(time::Duration::seconds(seconds))
            .map(Timestamp)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.format(FORMAT).map_err(|_| fmt::Error)?)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Timestamp::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Where "now" comes from; tests and retention policy inject their own.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_datetime(OffsetDateTime::now_utc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_round_trips() {
        let t = Timestamp::parse("2026-11-22T10:52:51.1234567+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T09:52:51.123456Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        let whole = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(whole.to_string(), "2026-01-01T00:00:00.000000Z");
    }
}

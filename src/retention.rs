//! Retention policy: pure functions of a package's retention state and a clock.

use crate::domain::Timestamp;
use crate::error::{Error, Result};

/// Why a package falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueReason {
    /// A finalized package's retention class ran out.
    Retention,
    /// An open package was never finalized.
    Abandoned,
}

impl DueReason {
    /// The `reason` recorded in `v1.package.expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            DueReason::Retention => "retention",
            DueReason::Abandoned => "abandoned",
        }
    }
}

/// What the policy needs to know of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionFacts {
    /// Finalized (else open).
    pub finalized: bool,
    /// Already expired.
    pub expired: bool,
    /// Under legal hold.
    pub legal_hold: bool,
    /// Created.
    pub created_at: Timestamp,
    /// Expiry of a finalized package (`None`: kept forever).
    pub expires_at: Option<Timestamp>,
}

/// When the package falls due, and why; `None` when it never does in its current state (kept
/// forever, under hold, or already expired). `open_grace_seconds` is how long an open package
/// may stay unfinalized.
pub fn due(facts: &RetentionFacts, open_grace_seconds: i64) -> Option<(Timestamp, DueReason)> {
    if facts.expired || facts.legal_hold {
        return None;
    }
    if facts.finalized {
        facts.expires_at.map(|t| (t, DueReason::Retention))
    } else {
        facts
            .created_at
            .plus_seconds(open_grace_seconds)
            .map(|t| (t, DueReason::Abandoned))
    }
}

/// Whether the package is due at `now`.
pub fn is_due(facts: &RetentionFacts, open_grace_seconds: i64, now: Timestamp) -> bool {
    due(facts, open_grace_seconds).is_some_and(|(at, _)| at <= now)
}

/// A class change may keep or extend what the current class promised, never shorten it, unless
/// an admin forces it. `None` is "forever".
pub fn check_class_change(
    current: Option<Timestamp>,
    proposed: Option<Timestamp>,
    force: bool,
) -> Result<()> {
    let shortens = match (current, proposed) {
        (None, Some(_)) => true,
        (Some(c), Some(p)) => p < c,
        (_, None) => false,
    };
    if shortens && !force {
        return Err(Error::Conflict(format!(
            "the new class would expire the package at {} instead of {}: retention may be \
             extended, not shortened (an admin may force it)",
            proposed.map_or("never".into(), |t| t.to_string()),
            current.map_or("never".into(), |t| t.to_string()),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::parse("2026-01-01T00:00:00.000000Z")
            .unwrap()
            .plus_seconds(seconds)
            .unwrap()
    }

    fn facts(finalized: bool, expires: Option<i64>) -> RetentionFacts {
        RetentionFacts {
            finalized,
            expired: false,
            legal_hold: false,
            created_at: at(0),
            expires_at: expires.map(at),
        }
    }

    #[test]
    fn finalized_packages_fall_due_at_their_expiry_open_ones_after_the_grace() {
        assert_eq!(
            due(&facts(true, Some(100)), 50),
            Some((at(100), DueReason::Retention))
        );
        assert_eq!(due(&facts(true, None), 50), None, "permanent");
        assert_eq!(
            due(&facts(false, None), 50),
            Some((at(50), DueReason::Abandoned))
        );
        assert!(!is_due(&facts(true, Some(100)), 50, at(99)));
        assert!(is_due(&facts(true, Some(100)), 50, at(100)));
    }

    #[test]
    fn holds_and_expired_packages_never_fall_due() {
        let mut held = facts(true, Some(1));
        held.legal_hold = true;
        assert_eq!(due(&held, 0), None);
        assert!(!is_due(&held, 0, at(1_000_000)));
        let mut gone = facts(false, None);
        gone.expired = true;
        assert_eq!(due(&gone, 0), None);
    }

    #[test]
    fn class_changes_extend_but_do_not_shorten_unless_forced() {
        assert!(check_class_change(Some(at(10)), Some(at(20)), false).is_ok());
        assert!(check_class_change(Some(at(10)), None, false).is_ok());
        assert!(check_class_change(Some(at(10)), Some(at(10)), false).is_ok());
        assert!(check_class_change(Some(at(10)), Some(at(5)), false).is_err());
        assert!(check_class_change(None, Some(at(5)), false).is_err());
        assert!(check_class_change(None, Some(at(5)), true).is_ok());
    }
}

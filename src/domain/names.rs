//! Identifiers and labels.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// A tenant: lowercase letters, digits, `-`, `_`, `.`; 1 to 63 bytes, starting with a letter
/// or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant every unauthenticated development set-up uses.
    pub const DEFAULT: &'static str = "default";
    /// The reserved tenant of events about physical storage, which no ordinary tenant owns.
    pub const SYSTEM: &'static str = "system";

    /// Validates a tenant id.
    pub fn new(text: &str) -> Result<Self> {
        let ok = !text.is_empty()
            && text.len() <= 63
            && text.as_bytes()[0].is_ascii_alphanumeric()
            && text.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if ok {
            Ok(TenantId(text.to_owned()))
        } else {
            Err(Error::InvalidInput(format!(
                "tenant `{}` is invalid: use 1-63 lowercase letters, digits, '-', '_' or '.'",
                text.escape_debug()
            )))
        }
    }

    /// The reserved `system` tenant.
    pub fn system() -> Self {
        TenantId(Self::SYSTEM.to_owned())
    }

    /// The `default` tenant.
    pub fn default_tenant() -> Self {
        TenantId(Self::DEFAULT.to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TenantId::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

macro_rules! uuid_id {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        // Always the hyphenated text form: uuid's own serde writes 16 raw bytes to binary
        // formats such as CBOR, which would make manifests and their JSON projection disagree.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Uuid::parse_str(&text)
                    .map($name)
                    .map_err(serde::de::Error::custom)
            }
        }

        impl $name {
            /// A new, time-ordered (v7) id.
            pub fn generate() -> Self {
                $name(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s).map($name).map_err(|_| {
                    Error::InvalidInput(format!("`{}` is not a UUID", s.escape_debug()))
                })
            }
        }
    };
}

uuid_id!(PackageId, "A package's id.");
uuid_id!(FileId, "A file's id (one relative path in one package).");

/// Producer, subject, media type and similar labels: 1 to 256 bytes, no control characters.
pub fn validate_label(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "`{field}` must be 1-256 bytes without control characters"
        )));
    }
    Ok(())
}

/// Package metadata: a flat map of text keys to text values (like OCI annotations), so it has
/// one canonical form in CBOR and JSON and filters compare exact strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Most entries a package may carry.
    pub const MAX_ENTRIES: usize = 64;
    /// Longest key, in bytes.
    pub const MAX_KEY_BYTES: usize = 128;
    /// Longest value, in bytes.
    pub const MAX_VALUE_BYTES: usize = 4096;

    /// Validates keys (`[A-Za-z0-9._:/-]`, 1-128 bytes) and values (at most 4 KiB, no NUL).
    pub fn new(entries: BTreeMap<String, String>) -> Result<Self> {
        if entries.len() > Self::MAX_ENTRIES {
            return Err(Error::InvalidInput(format!(
                "metadata has {} entries; at most {} are allowed",
                entries.len(),
                Self::MAX_ENTRIES
            )));
        }
        for (key, value) in &entries {
            let key_ok = !key.is_empty()
                && key.len() <= Self::MAX_KEY_BYTES
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b));
            if !key_ok {
                return Err(Error::InvalidInput(format!(
                    "metadata key `{}` is invalid: use 1-128 of A-Z a-z 0-9 . - _ : /",
                    key.escape_debug()
                )));
            }
            if value.len() > Self::MAX_VALUE_BYTES || value.contains('\0') {
                return Err(Error::InvalidInput(format!(
                    "metadata value for `{key}` must be at most 4096 bytes without NUL"
                )));
            }
        }
        Ok(Metadata(entries))
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// As a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).expect("string map serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_rules() {
        for ok in ["default", "a", "team-1.prod_x", &"a".repeat(63)] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Default", "-x", "a b", "a/b", &"a".repeat(64), "é"] {
            assert!(TenantId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_rules() {
        let ok = BTreeMap::from([("git.sha".to_string(), "abc".to_string())]);
        assert!(Metadata::new(ok).is_ok());
        let bad_key = BTreeMap::from([("a b".to_string(), "x".to_string())]);
        assert!(Metadata::new(bad_key).is_err());
        let nul = BTreeMap::from([("k".to_string(), "a\0".to_string())]);
        assert!(Metadata::new(nul).is_err());
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(Metadata::new(many).is_err());
    }
}

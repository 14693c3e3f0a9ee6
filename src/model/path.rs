//! `RelativePath`: where a file sits inside a package.

use crate::error::{Error, Result};
use std::fmt;

/// A `/`-separated path relative to the package root. Rejected, never "fixed": `..` or `.`
/// segments, empty segments (leading, trailing or doubled `/`), backslashes, NUL and other
/// control characters, and anything over 1024 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RelativePath(String);

impl RelativePath {
    /// Longest accepted path, in bytes.
    pub const MAX_BYTES: usize = 1024;

    /// Validates a relative path.
    pub fn new(text: &str) -> Result<Self> {
        let reject = |why: &str| {
            Err(Error::InvalidInput(format!(
                "relative path `{}` is invalid: {why}",
                text.chars().take(200).collect::<String>().escape_debug()
            )))
        };
        if text.is_empty() {
            return reject("it is empty");
        }
        if text.len() > Self::MAX_BYTES {
            return reject("it is longer than 1024 bytes");
        }
        if text.starts_with('/') {
            return reject("absolute paths are not allowed");
        }
        if text.contains('\\') {
            return reject("backslashes are not allowed");
        }
        if text.chars().any(char::is_control) {
            return reject("NUL and control characters are not allowed");
        }
        for segment in text.split('/') {
            match segment {
                "" => return reject("empty segments (`//` or a trailing `/`) are not allowed"),
                "." | ".." => return reject("`.` and `..` segments are not allowed"),
                _ => {}
            }
        }
        Ok(RelativePath(text.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RelativePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RelativePath::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "a",
            "dir/file.txt",
            "a/b/c/d.tar.gz",
            "..foo",
            "foo..",
            ".hidden",
            "é/ü",
            "a b",
        ] {
            assert_eq!(RelativePath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_escapes_and_junk() {
        let long = "a".repeat(1025);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "..\\x",
            "a\0b",
            "a\nb",
            "\u{7f}",
            &long,
        ] {
            assert!(RelativePath::new(bad).is_err(), "{bad:?}");
        }
        assert!(RelativePath::new(&"a".repeat(1024)).is_ok());
    }

    proptest! {
        #[test]
        fn accepted_paths_never_escape(text in "[a-z./\\\\]{0,12}") {
            if let Ok(p) = RelativePath::new(&text) {
                prop_assert!(!p.as_str().starts_with('/'));
                prop_assert!(p.as_str().split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                prop_assert!(!p.as_str().contains('\\'));
            }
        }
    }
}

//! `RelativePath`: where a file sits inside a package.

use crate::error::{Error, Result};
use std::fmt;

/// A `/`-separated path relative to the package root. Rejected, never "fixed": `..` or `.`
/// segments, empty segments (leading, trailing or doubled `/`), backslashes, NUL and other
/// control characters (U+0000-U+001F, U+007F-U+009F), the bidirectional controls that make a
/// name display as another (U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), text not in
/// Unicode NFC (so one name has one spelling), and anything over 1024 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RelativePath(String);

impl RelativePath {
    /// Longest accepted path, in bytes.
    pub const MAX_BYTES: usize = 1024;

    /// Validates a relative path given as input.
    pub fn new(text: &str) -> Result<Self> {
        let path = Self::stored(text)?;
        let reject = |why: &str| {
            Err(Error::InvalidInput(format!(
                "relative path `{}` is invalid: {why}",
                text.chars().take(200).collect::<String>().escape_debug()
            )))
        };
        if text.chars().any(is_bidi_control) {
            return reject("bidirectional control characters are not allowed");
        }
        if !unicode_normalization::is_nfc(text) {
            return reject("it is not in Unicode NFC (normalize it first)");
        }
        Ok(path)
    }

    /// A path as stored earlier (in the log, the views): held to the rules that keep it inside
    /// its package (no escapes, separators or control characters, at most 1024 bytes), not to
    /// the spelling rules added since (bidirectional controls, NFC), which the input it came
    /// from may predate.
    pub fn stored(text: &str) -> Result<Self> {
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

/// U+200E, U+200F, U+202A-U+202E, U+2066-U+2069: characters that reorder how text displays.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RelativePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RelativePath::stored(&String::deserialize(d)?).map_err(serde::de::Error::custom)
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
            "a\u{85}b",
            "a\u{9f}",
            "evil\u{202E}txt.exe",
            "a\u{200E}",
            "a\u{200F}",
            "\u{2066}x\u{2069}",
            "e\u{301}",
            &long,
        ] {
            assert!(RelativePath::new(bad).is_err(), "{bad:?}");
        }
        // Stored paths keep the rules that matter for safety, not the spelling ones.
        assert!(RelativePath::stored("e\u{301}/a\u{202E}b").is_ok());
        for unsafe_path in ["../x", "a//b", "a\0"] {
            assert!(RelativePath::stored(unsafe_path).is_err());
        }
        assert_eq!(RelativePath::new("\u{e9}").unwrap().as_str(), "é");
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

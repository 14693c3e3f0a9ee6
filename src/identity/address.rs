//! `ContentAddress`: `blake3:<64 lowercase hex>` or `sha256:<64 lowercase hex>`.

use std::fmt;
use std::str::FromStr;

/// A hash algorithm we address content by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// BLAKE3-256, the primary address of every blob.
    Blake3,
    /// SHA-256, kept beside BLAKE3 for interoperability (RFC 9530 `Repr-Digest`, SBOMs).
    Sha256,
}

impl Algorithm {
    /// The lowercase name used in addresses and storage keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A 32-byte digest value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 lowercase hex characters.
    pub fn from_hex(text: &str) -> Result<Self, DigestError> {
        if text.len() != 64 {
            return Err(DigestError::Length(text.len()));
        }
        if !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::NotLowercaseHex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| DigestError::NotLowercaseHex)?;
        Ok(Digest(out))
    }

    /// From raw bytes; the slice must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DigestError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| DigestError::Length(bytes.len() * 2))?;
        Ok(Digest(arr))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a digest or content address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The text was empty.
    #[error("content address is empty")]
    Empty,
    /// No `algorithm:` prefix.
    #[error("content address must look like `blake3:<64 hex>` or `sha256:<64 hex>`")]
    MissingAlgorithm,
    /// An algorithm we do not address by.
    #[error("unknown digest algorithm `{0}` (expected `blake3` or `sha256`)")]
    UnknownAlgorithm(String),
    /// Wrong number of hex characters.
    #[error("digest must be 64 hex characters, got {0}")]
    Length(usize),
    /// Uppercase letters, separators or other non-hex characters.
    #[error("digest must be lowercase hex (0-9, a-f)")]
    NotLowercaseHex,
}

/// An algorithm and digest: the name of some bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentAddress {
    algorithm: Algorithm,
    digest: Digest,
}

impl ContentAddress {
    /// Builds an address from its parts.
    pub fn new(algorithm: Algorithm, digest: Digest) -> Self {
        ContentAddress { algorithm, digest }
    }

    /// A BLAKE3 address.
    pub fn blake3(digest: Digest) -> Self {
        Self::new(Algorithm::Blake3, digest)
    }

    /// A SHA-256 address.
    pub fn sha256(digest: Digest) -> Self {
        Self::new(Algorithm::Sha256, digest)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The relative storage key: `<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>`.
    /// Built only from validated parts, so it can never contain `..` or a separator of its own.
    pub fn storage_key(&self) -> String {
        let hex = self.digest.to_hex();
        format!("{}/{}/{}/{}", self.algorithm, &hex[0..2], &hex[2..4], hex)
    }
}

impl FromStr for ContentAddress {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(DigestError::Empty);
        }
        let (algo, hex) = text.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        let algorithm = match algo {
            "blake3" => Algorithm::Blake3,
            "sha256" => Algorithm::Sha256,
            other => return Err(DigestError::UnknownAlgorithm(truncate_for_message(other))),
        };
        Ok(ContentAddress::new(algorithm, Digest::from_hex(hex)?))
    }
}

fn truncate_for_message(text: &str) -> String {
    text.chars().take(32).collect()
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.digest)
    }
}

impl fmt::Debug for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentAddress({self})")
    }
}

impl serde::Serialize for ContentAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ContentAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn parses_and_prints_both_algorithms() {
        for algo in ["blake3", "sha256"] {
            let text = format!("{algo}:{HEX}");
            let addr: ContentAddress = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
        }
    }

    #[test]
    fn storage_key_shards_by_prefix() {
        let addr: ContentAddress = format!("blake3:{HEX}").parse().unwrap();
        assert_eq!(addr.storage_key(), format!("blake3/af/13/{HEX}"));
    }

    #[test]
    fn rejects_bad_addresses() {
        let upper = format!("blake3:{}", HEX.to_uppercase());
        let short = format!("blake3:{}", &HEX[..63]);
        let long = format!("blake3:{HEX}0");
        let md5 = format!("md5:{HEX}");
        let sep = format!("blake3:{}/{}", &HEX[..31], &HEX[32..]);
        let dots = format!("blake3:../{}", &HEX[3..]);
        let cases: Vec<(&str, DigestError)> = vec![
            ("", DigestError::Empty),
            (HEX, DigestError::MissingAlgorithm),
            (&upper, DigestError::NotLowercaseHex),
            (&short, DigestError::Length(63)),
            (&long, DigestError::Length(65)),
            (&md5, DigestError::UnknownAlgorithm("md5".into())),
            (&sep, DigestError::NotLowercaseHex),
            (&dots, DigestError::NotLowercaseHex),
            ("BLAKE3:00", DigestError::UnknownAlgorithm("BLAKE3".into())),
        ];
        for (text, want) in cases {
            assert_eq!(
                text.parse::<ContentAddress>().unwrap_err(),
                want,
                "input {text:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 32]>(), sha in any::<bool>()) {
            let algo = if sha { Algorithm::Sha256 } else { Algorithm::Blake3 };
            let addr = ContentAddress::new(algo, Digest(bytes));
            let parsed: ContentAddress = addr.to_string().parse().unwrap();
            prop_assert_eq!(parsed, addr);
        }

        #[test]
        fn never_panics_and_accepts_only_canonical(text in ".{0,80}") {
            if let Ok(addr) = text.parse::<ContentAddress>() {
                prop_assert_eq!(addr.to_string(), text);
            }
        }
    }
}

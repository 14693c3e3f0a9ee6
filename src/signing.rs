//! The store's signing key (Ed25519): it signs log checkpoints. Kept in a PKCS#8 PEM file
//! (`openssl genpkey -algorithm ed25519` writes one); the embedded default generates one into
//! the data directory on first start. A key is known by its id: the lowercase hex SHA-256 of
//! its raw 32-byte public key. Public keys are kept in the database once used, so that what a
//! rotated-out key signed keeps verifying (`GET /keys`).

use crate::error::{Error, Result};
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rand::TryRngCore as _;
use sha2::Digest as _;
use std::path::Path;

/// A private key and its id.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM Ed25519 private key.
    pub fn load(path: &Path) -> Result<Self> {
        let pem = crate::domain::read_secret(path)
            .map_err(|e| Error::InvalidInput(format!("signing key: {e}")))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            Error::InvalidInput(format!(
                "signing key {}: not a PKCS#8 PEM Ed25519 private key ({e})",
                path.display()
            ))
        })?;
        Ok(Self::of(key))
    }

    /// Reads the key at `path`, or makes a new one there (readable by this user only) when
    /// there is no file: for the embedded default's data directory.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        if path.exists() {
            return Self::load(path);
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| Error::Integrity(format!("no randomness for a signing key: {e}")))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        let pem = key
            .to_pkcs8_pem(Default::default())
            .map_err(|e| Error::Integrity(format!("encoding a new signing key: {e}")))?;
        write_new(path, pem.as_bytes())?;
        tracing::info!(path = %path.display(), "generated a signing key");
        // Another process may have made it first: whichever file won is the key.
        Self::load(path)
    }

    fn of(key: ed25519_dalek::SigningKey) -> Self {
        let id = key_id(&key.verifying_key().to_bytes());
        SigningKey { key, id }
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// Creates `path` with `bytes`, mode 0600, whole or not at all: written to a temporary file
/// beside it, synced, then linked to its name, which fails if a key is there already (another
/// process made one first: that one is kept). Never replaces a key.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |p: &Path, e: std::io::Error| Error::InvalidInput(format!("{}: {e}", p.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()));
    let linked = written.and_then(|()| match std::fs::hard_link(&temporary, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&temporary);
    linked.map_err(|e| fail(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(dir, e))
}

/// A public key's id: lowercase hex SHA-256 of its 32 raw bytes.
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex::encode(sha2::Sha256::digest(public_key))
}

/// A raw public key as a PEM SubjectPublicKeyInfo (what `openssl pkey -pubin` reads).
pub fn public_key_pem(public_key: &[u8; 32]) -> Result<String> {
    ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .and_then(|k| {
            k.to_public_key_pem(Default::default())
                .map_err(|_| ed25519_dalek::SignatureError::new())
        })
        .map_err(|e| Error::Integrity(format!("a stored public key is not Ed25519: {e}")))
}

/// The raw key of a PEM SubjectPublicKeyInfo holding an Ed25519 public key.
pub fn public_key_from_pem(pem: &str) -> Result<[u8; 32]> {
    ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
        .map(|k| k.to_bytes())
        .map_err(|e| Error::InvalidInput(format!("not a PEM Ed25519 public key: {e}")))
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `message` (strict: no
/// malleable or small-order forms).
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_signs_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing-key.pem");
        let key = SigningKey::load_or_generate(&path).unwrap();
        let again = SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(
            key.id(),
            again.id(),
            "the second start reads the first's key"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let signature = key.sign(b"checkpoint");
        assert!(verify(&key.public_key(), b"checkpoint", &signature));
        assert!(!verify(&key.public_key(), b"checkpoinT", &signature));
        assert_eq!(key.id().len(), 64);
        assert!(
            public_key_pem(&key.public_key())
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        std::fs::write(&path, "not a key").unwrap();
        assert!(SigningKey::load(&path).is_err());
    }
}

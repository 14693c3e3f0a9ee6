//! Settings of one S3 backend, as written in the storage TOML file.

use serde::Deserialize;

/// Where a secret comes from: never the configuration file itself, never a request.
///
/// Written `env:NAME` (an environment variable) or `file:/path` (a mounted secret file, read by
/// [`read_secret`](crate::domain::read_secret): trailing newlines are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file.
    File(std::path::PathBuf),
}

impl TryFrom<String> for SecretRef {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("env", name)) if !name.is_empty() => Ok(SecretRef::Env(name.to_owned())),
            Some(("file", path)) if !path.is_empty() => Ok(SecretRef::File(path.into())),
            _ => Err(format!(
                "`{text}` is not a secret reference: write env:VARIABLE or file:/path"
            )),
        }
    }
}

impl SecretRef {
    /// Reads the secret.
    pub fn resolve(&self) -> Result<String, String> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => crate::domain::read_secret(path)?,
        };
        if value.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(value)
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_threshold() -> u64 {
    16 * 1024 * 1024
}
fn default_chunk() -> u64 {
    8 * 1024 * 1024
}
fn default_concurrency() -> usize {
    4
}
fn default_attempts() -> u32 {
    4
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_request_timeout() -> u64 {
    120
}

fn default_write_probe() -> u64 {
    60
}

/// One S3-compatible backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint, e.g. `http://127.0.0.1:7480` (Ceph RGW); absent for AWS S3.
    pub endpoint_url: Option<String>,
    /// Region (`us-east-1` for most S3-compatible servers).
    #[serde(default = "default_region")]
    pub region: String,
    /// Bucket, which must exist.
    pub bucket: String,
    /// Prefix of every key this backend writes.
    #[serde(default)]
    pub key_prefix: String,
    /// Access key id.
    pub access_key_ref: SecretRef,
    /// Secret access key.
    pub secret_key_ref: SecretRef,
    /// Storage class of new objects (`STANDARD`, `STANDARD_IA`, ...).
    pub storage_class: Option<String>,
    /// Server-side encryption of new objects (`AES256`, `aws:kms`).
    pub sse: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`): needed by Ceph and MinIO without
    /// wildcard DNS.
    #[serde(default)]
    pub force_path_style: bool,
    /// Files larger than this are uploaded in parts.
    #[serde(default = "default_threshold")]
    pub multipart_threshold_bytes: u64,
    /// Part size (at least 5 MiB).
    #[serde(default = "default_chunk")]
    pub multipart_chunk_bytes: u64,
    /// Parts of one file in flight at once.
    #[serde(default = "default_concurrency")]
    pub multipart_concurrency: usize,
    /// Attempts per request, retries included (transient errors back off exponentially).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Seconds to establish a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Seconds one attempt of one request may take.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// A health check always asks for the bucket, but writes (and deletes) a probe object only
    /// when the last successful probe is older than this; `/health` is anonymous, so this
    /// bounds the writes anyone can cause.
    #[serde(default = "default_write_probe")]
    pub health_write_probe_seconds: u64,
    /// Sign request bodies (SigV4 with the payload's SHA-256): one more SHA-256 pass over every
    /// byte uploaded, which lets the server reject a body changed on the way. Default: only
    /// over plain `http://`; over `https://` TLS protects the bytes (as other SDKs do), and our
    /// own digests check them end to end either way (every download, `verify`).
    pub sign_payload: Option<bool>,
}

impl S3Settings {
    /// Whether request bodies are signed (see [`S3Settings::sign_payload`]).
    pub fn signs_payload(&self) -> bool {
        self.sign_payload.unwrap_or_else(|| {
            self.endpoint_url
                .as_deref()
                .is_some_and(|url| url.starts_with("http://"))
        })
    }

    /// Checks the values a server would only reject later.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("bucket must not be empty".into());
        }
        if self.multipart_chunk_bytes < super::MIN_PART {
            return Err(format!(
                "multipart_chunk_bytes must be at least {} (5 MiB)",
                super::MIN_PART
            ));
        }
        if self.multipart_concurrency == 0 || self.max_attempts == 0 {
            return Err("multipart_concurrency and max_attempts must be at least 1".into());
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "endpoint_url `{url}` must start with http:// or https://"
            ));
        }
        Ok(())
    }

    /// Settings with defaults and literal test credentials taken from the environment
    /// variables `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    #[doc(hidden)]
    pub fn for_tests(bucket: &str) -> Self {
        S3Settings {
            endpoint_url: None,
            region: default_region(),
            bucket: bucket.into(),
            key_prefix: String::new(),
            access_key_ref: SecretRef::Env("AWS_ACCESS_KEY_ID".into()),
            secret_key_ref: SecretRef::Env("AWS_SECRET_ACCESS_KEY".into()),
            storage_class: None,
            sse: None,
            force_path_style: true,
            multipart_threshold_bytes: default_threshold(),
            multipart_chunk_bytes: default_chunk(),
            multipart_concurrency: default_concurrency(),
            max_attempts: default_attempts(),
            connect_timeout_seconds: default_connect_timeout(),
            request_timeout_seconds: default_request_timeout(),
            health_write_probe_seconds: default_write_probe(),
            sign_payload: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_signed_by_default_only_over_plain_http() {
        let mut s = S3Settings::for_tests("b");
        assert!(!s.signs_payload(), "AWS S3 (https)");
        s.endpoint_url = Some("http://127.0.0.1:7480".into());
        assert!(s.signs_payload());
        s.endpoint_url = Some("https://rgw.internal".into());
        assert!(!s.signs_payload());
        s.sign_payload = Some(true);
        assert!(s.signs_payload());
        s.endpoint_url = Some("http://127.0.0.1:7480".into());
        s.sign_payload = Some(false);
        assert!(!s.signs_payload());
    }

    #[test]
    fn secret_refs_parse_and_resolve() {
        assert_eq!(
            SecretRef::try_from("env:X".to_owned()),
            Ok(SecretRef::Env("X".into()))
        );
        assert!(SecretRef::try_from("plain-secret".to_owned()).is_err());
        assert!(SecretRef::try_from("env:".to_owned()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        assert_eq!(SecretRef::File(path).resolve().unwrap(), "s3cr3t");
        assert!(
            SecretRef::Env("ARTIFACTSTORE_SURELY_UNSET_1".into())
                .resolve()
                .unwrap_err()
                .contains("not set")
        );
    }

    #[test]
    fn small_parts_and_bad_endpoints_are_refused() {
        let mut s = S3Settings::for_tests("b");
        assert!(s.validate().is_ok());
        s.multipart_chunk_bytes = 1024;
        assert!(s.validate().unwrap_err().contains("5 MiB"));
        s = S3Settings::for_tests("b");
        s.endpoint_url = Some("127.0.0.1:7480".into());
        assert!(s.validate().is_err());
    }
}

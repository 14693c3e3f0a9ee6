//! The storage configuration file: backends by id, the default one, and routing rules.
//!
//! ```toml
//! default_backend = "ceph"
//!
//! [backends.ceph]
//! kind = "s3"
//! endpoint_url = "http://127.0.0.1:7480"
//! bucket = "artifacts"
//! key_prefix = "blobs"
//! access_key_ref = "env:S3_ACCESS_KEY"
//! secret_key_ref = "file:/run/secrets/s3_secret_key"
//! force_path_style = true
//!
//! [[routes]]                  # first match wins; no match: the default backend
//! retention_class = "ephemeral"
//! backend = "local"
//! ```
//!
//! A `local` backend (under the data directory, or `ARTIFACTSTORE_STORAGE_LOCAL_ROOT`) always
//! exists unless the file defines one with that id, so blobs written before a switch of the
//! default stay readable.

use super::s3::{S3Settings, S3Store};
use super::{Backends, BlobStore, local::LocalStore};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The id of the implicit local backend.
pub const LOCAL_BACKEND: &str = "local";

/// The parsed file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where new blobs go when no route matches (default: `local`).
    pub default_backend: Option<String>,
    /// Backends by id.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendSpec>,
    /// Routing rules, first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendSpec {
    /// A directory.
    Local(LocalSettings),
    /// An S3-compatible bucket.
    S3(Box<S3Settings>),
}

/// A local backend's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Its root directory.
    pub root: PathBuf,
}

/// A routing rule: packages matching every given criterion go to `backend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Matches packages of this retention class.
    pub retention_class: Option<String>,
    /// Matches packages of this producer.
    pub producer: Option<String>,
    /// The backend they go to.
    pub backend: String,
}

impl Route {
    /// Whether a package of this class and producer matches.
    pub fn matches(&self, retention_class: &str, producer: &str) -> bool {
        self.retention_class
            .as_deref()
            .is_none_or(|c| c == retention_class)
            && self.producer.as_deref().is_none_or(|p| p == producer)
    }
}

impl StorageConfig {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> std::result::Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the TOML text and checks that every id it names exists.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let config: StorageConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        for id in config.backends.keys() {
            let valid = id.len() <= 63
                && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
            if !valid {
                return Err(format!(
                    "backend id `{id}` must be 1-63 of a-z, 0-9, `.`, `_`, `-`, starting with a \
                     letter or digit"
                ));
            }
        }
        let exists = |id: &str| id == LOCAL_BACKEND || config.backends.contains_key(id);
        if let Some(id) = &config.default_backend
            && !exists(id)
        {
            return Err(format!(
                "default_backend `{id}` is not a configured backend"
            ));
        }
        for (i, route) in config.routes.iter().enumerate() {
            if !exists(&route.backend) {
                return Err(format!(
                    "routes[{i}] names backend `{}`, which is not configured",
                    route.backend
                ));
            }
            if route.retention_class.is_none() && route.producer.is_none() {
                return Err(format!(
                    "routes[{i}] matches everything: give retention_class and/or producer, or \
                     set default_backend"
                ));
            }
        }
        Ok(config)
    }

    /// Every local backend: its id, its root (`local_root` is the implicit local backend's),
    /// and whether new files may be written to it (the default backend, with
    /// `default_override`, or a route's).
    pub fn local_roots(
        &self,
        local_root: &Path,
        default_override: Option<&str>,
    ) -> Vec<(String, std::path::PathBuf, bool)> {
        let default = default_override
            .or(self.default_backend.as_deref())
            .unwrap_or(LOCAL_BACKEND);
        let written = |id: &str| id == default || self.routes.iter().any(|r| r.backend == id);
        let mut roots = Vec::new();
        if !self.backends.contains_key(LOCAL_BACKEND) {
            roots.push((
                LOCAL_BACKEND.to_owned(),
                local_root.to_owned(),
                written(LOCAL_BACKEND),
            ));
        }
        for (id, spec) in &self.backends {
            if let BackendSpec::Local(local) = spec {
                roots.push((id.clone(), local.root.clone(), written(id)));
            }
        }
        roots
    }

    /// Opens every backend. `default_override` (from the environment) replaces
    /// `default_backend`; `local_root` is the implicit local backend's root.
    pub fn open(&self, default_override: Option<&str>, local_root: &Path) -> Result<Backends> {
        let mut all: Vec<Arc<dyn BlobStore>> = Vec::new();
        if !self.backends.contains_key(LOCAL_BACKEND) {
            all.push(Arc::new(LocalStore::open(LOCAL_BACKEND, local_root)?));
        }
        for (id, spec) in &self.backends {
            all.push(match spec {
                BackendSpec::Local(local) => Arc::new(LocalStore::open(id, &local.root)?),
                BackendSpec::S3(s3) => Arc::new(S3Store::open(id, s3)?),
            });
        }
        let default_id = default_override
            .or(self.default_backend.as_deref())
            .unwrap_or(LOCAL_BACKEND);
        Backends::new(all, default_id, self.routes.clone())
    }
}

impl Backends {
    /// Backends with a default and routing rules; every id named must be among them.
    pub fn new(all: Vec<Arc<dyn BlobStore>>, default_id: &str, routes: Vec<Route>) -> Result<Self> {
        let all: Vec<_> = all
            .into_iter()
            .map(super::measured::Measured::wrap)
            .collect();
        let find = |id: &str| {
            all.iter().find(|b| b.id() == id).cloned().ok_or_else(|| {
                Error::InvalidInput(format!("storage backend `{id}` is not configured"))
            })
        };
        let default = find(default_id)?;
        for route in &routes {
            find(&route.backend)?;
        }
        Ok(Backends {
            default,
            all,
            routes,
        })
    }

    /// The backend new blobs of a package with this class and producer go to.
    pub fn route(&self, retention_class: &str, producer: &str) -> &Arc<dyn BlobStore> {
        self.routes
            .iter()
            .find(|r| r.matches(retention_class, producer))
            .and_then(|r| self.get(&r.backend))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        default_backend = "ceph"
        [backends.ceph]
        kind = "s3"
        endpoint_url = "http://127.0.0.1:7480"
        bucket = "artifacts"
        access_key_ref = "env:K"
        secret_key_ref = "file:/run/secrets/s"
        force_path_style = true
        [backends.archive]
        kind = "local"
        root = "/srv/archive"
        [[routes]]
        retention_class = "ephemeral"
        backend = "local"
        [[routes]]
        producer = "release-bot"
        retention_class = "long"
        backend = "archive"
    "#;

    #[test]
    fn the_documented_example_parses() {
        let config = StorageConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.default_backend.as_deref(), Some("ceph"));
        assert!(matches!(config.backends["ceph"], BackendSpec::S3(_)));
        assert!(matches!(config.backends["archive"], BackendSpec::Local(_)));
        assert!(config.routes[0].matches("ephemeral", "anyone"));
        assert!(!config.routes[1].matches("long", "ci"));
        assert!(config.routes[1].matches("long", "release-bot"));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, expect) in [
            ("default_backend = \"nope\"", "not a configured backend"),
            ("[[routes]]\nbackend = \"local\"", "matches everything"),
            (
                "[[routes]]\nproducer = \"x\"\nbackend = \"gone\"",
                "not configured",
            ),
            ("[backends.x]\nkind = \"ftp\"", "unknown variant"),
            (
                "[backends.x]\nkind = \"local\"\nroot = \"/a\"\ntypo = 1",
                "unknown field",
            ),
            ("surprise = true", "unknown field"),
        ] {
            let err = StorageConfig::parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn routing_picks_first_match_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "default_backend = \"b\"\n[backends.b]\nkind = \"local\"\nroot = \"{}\"\n\
             [[routes]]\nretention_class = \"ephemeral\"\nbackend = \"local\"",
            dir.path().join("b").display()
        );
        let backends = StorageConfig::parse(&text)
            .unwrap()
            .open(None, &dir.path().join("local"))
            .unwrap();
        assert_eq!(backends.route("ephemeral", "ci").id(), "local");
        assert_eq!(backends.route("standard", "ci").id(), "b");
        assert_eq!(backends.default_backend().id(), "b");
        // The environment's override wins over the file.
        let overridden = StorageConfig::parse(&text)
            .unwrap()
            .open(Some("local"), &dir.path().join("local"))
            .unwrap();
        assert_eq!(overridden.route("standard", "ci").id(), "local");
        assert!(
            StorageConfig::default()
                .open(Some("nope"), &dir.path().join("local"))
                .is_err()
        );
    }
}

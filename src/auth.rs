//! Bearer tokens: who is calling (a tenant) and what they may do (scopes). Tokens are held and
//! compared only as SHA-256 hashes, in constant time.

use crate::model::TenantId;
use sha2::Digest as _;
use std::path::Path;
use subtle::ConstantTimeEq;

/// What a principal may do. `admin` implies `write`, which implies `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read packages, files, manifests, events.
    Read,
    /// Create packages, upload, finalize.
    Write,
    /// Administrative operations.
    Admin,
}

impl Scope {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant everything the caller does belongs to.
    pub tenant: TenantId,
    /// The highest scope granted (lower ones are implied).
    pub scope: Scope,
    /// A label for logs and provenance (the token's name, or `anonymous`).
    pub name: String,
}

impl Principal {
    /// Whether the principal holds `needed`.
    pub fn allows(&self, needed: Scope) -> bool {
        self.scope >= needed
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or unknown ones.
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// Valid credentials without the needed scope.
    #[error("this token lacks the `{0:?}` scope")]
    Forbidden(Scope),
}

#[derive(Debug, Clone)]
struct TokenEntry {
    sha256: [u8; 32],
    principal: Principal,
}

/// The configured tokens.
#[derive(Debug, Clone)]
pub struct TokenStore {
    entries: Vec<TokenEntry>,
    anonymous_read: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<FileToken>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    tenant: String,
    scopes: Vec<String>,
    sha256: String,
    name: Option<String>,
}

fn highest(scopes: &[&str], context: &str) -> Result<Scope, String> {
    let mut best = None;
    for s in scopes {
        let scope = Scope::parse(s)
            .ok_or_else(|| format!("{context}: unknown scope `{s}` (read, write, admin)"))?;
        best = best.max(Some(scope));
    }
    best.ok_or_else(|| format!("{context}: no scopes"))
}

impl TokenStore {
    /// No tokens: the development default (everyone is tenant `default` with every scope).
    pub fn development() -> Self {
        TokenStore {
            entries: Vec::new(),
            anonymous_read: false,
        }
    }

    /// Builds the store from `ARTIFACTSTORE_TOKENS` (`tenant:scope+scope:token,...`), the TOML
    /// file named by `ARTIFACTSTORE_TOKENS_FILE` (`[[token]]` with `tenant`, `scopes`, `sha256`
    /// and optionally `name`) and `ARTIFACTSTORE_ANON_READ`. Errors name the setting.
    pub fn from_settings(
        inline: Option<&str>,
        file: Option<&Path>,
        anonymous_read: bool,
    ) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, item) in inline
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let context = format!("ARTIFACTSTORE_TOKENS entry {}", i + 1);
            let mut parts = item.splitn(3, ':');
            let (Some(tenant), Some(scopes), Some(token)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("{context}: expected tenant:scope+scope:token"));
            };
            if token.len() < 8 {
                return Err(format!(
                    "{context}: the token must be at least 8 characters"
                ));
            }
            let tenant = TenantId::new(tenant).map_err(|e| format!("{context}: {e}"))?;
            let scopes: Vec<&str> = scopes.split('+').collect();
            entries.push(TokenEntry {
                sha256: sha2::Sha256::digest(token.as_bytes()).into(),
                principal: Principal {
                    name: format!("{tenant}-token-{}", i + 1),
                    tenant,
                    scope: highest(&scopes, &context)?,
                },
            });
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "ARTIFACTSTORE_TOKENS_FILE: cannot read {}: {e}",
                    path.display()
                )
            })?;
            let parsed: TokensFile = toml::from_str(&text)
                .map_err(|e| format!("ARTIFACTSTORE_TOKENS_FILE: {}", e.message()))?;
            for (i, t) in parsed.token.into_iter().enumerate() {
                let context = format!("ARTIFACTSTORE_TOKENS_FILE token {}", i + 1);
                let tenant = TenantId::new(&t.tenant).map_err(|e| format!("{context}: {e}"))?;
                let digest = crate::identity::Digest::from_hex(&t.sha256)
                    .map_err(|e| format!("{context}: sha256: {e}"))?;
                let scopes: Vec<&str> = t.scopes.iter().map(String::as_str).collect();
                entries.push(TokenEntry {
                    sha256: digest.0,
                    principal: Principal {
                        tenant,
                        scope: highest(&scopes, &context)?,
                        name: t.name.unwrap_or_else(|| format!("file-token-{}", i + 1)),
                    },
                });
            }
        }
        Ok(TokenStore {
            entries,
            anonymous_read,
        })
    }

    /// True when no tokens are configured (development mode).
    pub fn is_development(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tenants named by the configured tokens.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut t: Vec<_> = self
            .entries
            .iter()
            .map(|e| e.principal.tenant.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Authenticates a bearer token (or its absence) and checks the scope.
    pub fn authorize(&self, bearer: Option<&str>, needed: Scope) -> Result<Principal, AuthError> {
        let principal = if self.is_development() {
            Principal {
                tenant: TenantId::default_tenant(),
                scope: Scope::Admin,
                name: "development".into(),
            }
        } else {
            match bearer {
                Some(token) => self.lookup(token).ok_or(AuthError::Unauthenticated)?,
                None if self.anonymous_read => Principal {
                    tenant: TenantId::default_tenant(),
                    scope: Scope::Read,
                    name: "anonymous".into(),
                },
                None => return Err(AuthError::Unauthenticated),
            }
        };
        if principal.allows(needed) {
            Ok(principal)
        } else {
            Err(AuthError::Forbidden(needed))
        }
    }

    fn lookup(&self, token: &str) -> Option<Principal> {
        let presented: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        // Compare against every entry, without early exit, in constant time.
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.sha256.ct_eq(&presented)) {
                found = Some(entry.principal.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_tokens_map_to_tenants_and_scopes() {
        let store = TokenStore::from_settings(
            Some("acme:read+write:s3cret-token, other:read:reader-token"),
            None,
            false,
        )
        .unwrap();
        let p = store.authorize(Some("s3cret-token"), Scope::Write).unwrap();
        assert_eq!(p.tenant.as_str(), "acme");
        assert_eq!(
            store.authorize(Some("reader-token"), Scope::Write),
            Err(AuthError::Forbidden(Scope::Write))
        );
        assert_eq!(
            store
                .authorize(Some("reader-token"), Scope::Read)
                .unwrap()
                .tenant
                .as_str(),
            "other"
        );
        assert_eq!(
            store.authorize(Some("nope-nope"), Scope::Read),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(
            store.authorize(None, Scope::Read),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(store.tenants().len(), 2);
    }

    #[test]
    fn file_tokens_are_stored_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let hash = hex::encode(sha2::Sha256::digest(b"ci-token-123"));
        std::fs::write(&path, format!("[[token]]\ntenant = \"ci\"\nscopes = [\"admin\"]\nsha256 = \"{hash}\"\nname = \"ci-bot\"\n")).unwrap();
        let store = TokenStore::from_settings(None, Some(&path), true).unwrap();
        let p = store.authorize(Some("ci-token-123"), Scope::Admin).unwrap();
        assert_eq!((p.tenant.as_str(), p.name.as_str()), ("ci", "ci-bot"));
        // Anonymous reads are open explicitly, for the default tenant, read only.
        let anon = store.authorize(None, Scope::Read).unwrap();
        assert_eq!((anon.tenant.as_str(), anon.scope), ("default", Scope::Read));
        assert_eq!(
            store.authorize(None, Scope::Write),
            Err(AuthError::Forbidden(Scope::Write))
        );
    }

    #[test]
    fn bad_settings_name_the_setting() {
        for (inline, want) in [
            ("x:read", "ARTIFACTSTORE_TOKENS"),
            ("A:read:longtoken", "ARTIFACTSTORE_TOKENS"),
            ("a:fly:longtoken", "unknown scope"),
            ("a:read:short", "8 characters"),
        ] {
            let err = TokenStore::from_settings(Some(inline), None, false).unwrap_err();
            assert!(err.contains(want), "{inline}: {err}");
        }
    }

    #[test]
    fn development_mode_is_default_tenant_with_all_scopes() {
        let store = TokenStore::development();
        let p = store.authorize(None, Scope::Admin).unwrap();
        assert_eq!(p.tenant.as_str(), "default");
    }
}

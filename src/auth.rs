//! Bearer tokens: who is calling (a tenant) and what they may do (scopes). Tokens are held and
//! compared only as SHA-256 hashes, in constant time.

use crate::domain::TenantId;
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
    /// May act for the whole service, beyond its tenant (define retention classes, see every
    /// stored copy): an admin of the reserved tenant `system`, or anyone in development mode.
    pub operator: bool,
}

impl Principal {
    /// A principal of `tenant`; an operator if it is an admin of the `system` tenant.
    pub fn new(tenant: TenantId, scope: Scope, name: impl Into<String>) -> Self {
        Principal {
            operator: scope == Scope::Admin && tenant.as_str() == TenantId::SYSTEM,
            tenant,
            scope,
            name: name.into(),
        }
    }

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
    /// Valid credentials, but the operation is the service operator's.
    #[error("only an admin token of the `system` tenant may do this")]
    NotOperator,
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

const NO_TOKENS: &str = "ARTIFACTSTORE_TOKENS_FILE: the file holds no [[token]] entries";

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

/// A tokens setting that cannot be used: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TokensError {
    /// `ARTIFACTSTORE_TOKENS` or `ARTIFACTSTORE_TOKENS_FILE`.
    pub setting: &'static str,
    /// What is wrong, with the entry it is in.
    pub message: String,
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
    ) -> Result<Self, TokensError> {
        let mut entries =
            Self::parse_inline(inline.unwrap_or("")).map_err(|message| TokensError {
                setting: "ARTIFACTSTORE_TOKENS",
                message,
            })?;
        if let Some(path) = file {
            entries.extend(Self::read_file(path).map_err(|message| TokensError {
                setting: "ARTIFACTSTORE_TOKENS_FILE",
                message,
            })?);
        }
        Ok(TokenStore {
            entries,
            anonymous_read,
        })
    }

    /// The tokens of `ARTIFACTSTORE_TOKENS`.
    fn parse_inline(inline: &str) -> Result<Vec<TokenEntry>, String> {
        let mut entries = Vec::new();
        for (i, item) in inline
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
                principal: Principal::new(
                    tenant.clone(),
                    highest(&scopes, &context)?,
                    format!("{tenant}-token-{}", i + 1),
                ),
            });
        }
        Ok(entries)
    }

    /// The tokens of the file `ARTIFACTSTORE_TOKENS_FILE` names.
    fn read_file(path: &Path) -> Result<Vec<TokenEntry>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "ARTIFACTSTORE_TOKENS_FILE: cannot read {}: {e}",
                path.display()
            )
        })?;
        Self::parse_file(&text).map_err(|e| {
            if e == NO_TOKENS {
                format!(
                    "ARTIFACTSTORE_TOKENS_FILE: {} holds no [[token]] entries",
                    path.display()
                )
            } else {
                e
            }
        })
    }

    /// The tokens of a tokens file's text (`[[token]]` entries), or why it is not one.
    fn parse_file(text: &str) -> Result<Vec<TokenEntry>, String> {
        let mut entries = Vec::new();
        {
            let parsed: TokensFile = toml::from_str(text)
                .map_err(|e| format!("ARTIFACTSTORE_TOKENS_FILE: {}", e.message()))?;
            // A file named on purpose that grants nothing would silently mean development
            // mode (every caller an admin): refuse it.
            if parsed.token.is_empty() {
                return Err(NO_TOKENS.into());
            }
            for (i, t) in parsed.token.into_iter().enumerate() {
                let context = format!("ARTIFACTSTORE_TOKENS_FILE token {}", i + 1);
                let tenant = TenantId::new(&t.tenant).map_err(|e| format!("{context}: {e}"))?;
                let digest = crate::identity::Digest::from_hex(&t.sha256)
                    .map_err(|e| format!("{context}: sha256: {e}"))?;
                let scopes: Vec<&str> = t.scopes.iter().map(String::as_str).collect();
                entries.push(TokenEntry {
                    sha256: digest.0,
                    principal: Principal::new(
                        tenant,
                        highest(&scopes, &context)?,
                        t.name.unwrap_or_else(|| format!("file-token-{}", i + 1)),
                    ),
                });
            }
        }
        Ok(entries)
    }

    /// Checks a tokens file's text as start-up would, without reading a file: how many tokens
    /// it grants, or why it is refused (for tools and fuzzing).
    pub fn check_file_text(text: &str) -> Result<usize, String> {
        Self::parse_file(text).map(|entries| entries.len())
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

    /// Authenticates a bearer token (or its absence) and checks that it is the operator's
    /// (see [`Principal::operator`]).
    pub fn authorize_operator(&self, bearer: Option<&str>) -> Result<Principal, AuthError> {
        let principal = self.authorize(bearer, Scope::Admin)?;
        if principal.operator {
            Ok(principal)
        } else {
            Err(AuthError::NotOperator)
        }
    }

    /// Authenticates a bearer token (or its absence) and checks the scope.
    pub fn authorize(&self, bearer: Option<&str>, needed: Scope) -> Result<Principal, AuthError> {
        let principal = self.authenticate(bearer)?;
        if principal.allows(needed) {
            Ok(principal)
        } else {
            Err(AuthError::Forbidden(needed))
        }
    }

    /// Who a bearer token (or its absence) is, whatever it may do.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, AuthError> {
        Ok(if self.is_development() {
            Principal {
                operator: true,
                ..Principal::new(TenantId::default_tenant(), Scope::Admin, "development")
            }
        } else {
            match bearer {
                Some(token) => self.lookup(token).ok_or(AuthError::Unauthenticated)?,
                None if self.anonymous_read => {
                    Principal::new(TenantId::default_tenant(), Scope::Read, "anonymous")
                }
                None => return Err(AuthError::Unauthenticated),
            }
        })
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
            assert_eq!(err.setting, "ARTIFACTSTORE_TOKENS");
            assert!(err.message.contains(want), "{inline}: {err}");
        }
    }

    #[test]
    fn only_system_admins_and_development_mode_are_operators() {
        let store = TokenStore::from_settings(
            Some("system:admin:operator-token,system:write:system-writer,acme:admin:acme-admin-token"),
            None,
            false,
        )
        .unwrap();
        assert!(store.authorize_operator(Some("operator-token")).is_ok());
        assert_eq!(
            store.authorize_operator(Some("acme-admin-token")),
            Err(AuthError::NotOperator)
        );
        assert_eq!(
            store.authorize_operator(Some("system-writer")),
            Err(AuthError::Forbidden(Scope::Admin))
        );
        assert!(TokenStore::development().authorize_operator(None).is_ok());
    }

    #[test]
    fn a_tokens_file_without_tokens_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        for text in ["", "# nothing yet\n", "token = []\n"] {
            std::fs::write(&path, text).unwrap();
            let err = TokenStore::from_settings(None, Some(&path), false).unwrap_err();
            assert_eq!(err.setting, "ARTIFACTSTORE_TOKENS_FILE");
            assert!(
                err.message.contains("no [[token]] entries"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn the_compose_stacks_tokens_file_is_valid() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tokens.toml"));
        let store = TokenStore::from_settings(None, Some(path), false).unwrap();
        assert!(!store.is_development());
        assert!(
            store
                .authorize_operator(Some("change-me-operator-token"))
                .is_ok()
        );
        let ci = store
            .authorize(Some("change-me-ci-token"), Scope::Write)
            .unwrap();
        assert_eq!(ci.tenant.as_str(), "ci");
    }

    #[test]
    fn development_mode_is_default_tenant_with_all_scopes() {
        let store = TokenStore::development();
        let p = store.authorize(None, Scope::Admin).unwrap();
        assert_eq!(p.tenant.as_str(), "default");
    }
}

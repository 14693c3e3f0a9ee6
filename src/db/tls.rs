//! TLS to PostgreSQL, chosen by the database URL as libpq users write it.
//!
//! - `sslmode=disable` or `prefer` (the default): no TLS, as before.
//! - `sslmode=require`: TLS, and the server's certificate is **verified**: against the CA
//!   certificates in `sslrootcert=<PEM file>` when given (a managed service's CA bundle),
//!   else against the system's roots; the host name (or IP address) must match. This is
//!   stricter than libpq's `require`, which encrypts without checking who answers.
//! - `sslmode=verify-full` (libpq's name for what `require` does here) is taken as `require`;
//!   `verify-ca` (a chain check without the host name) is refused rather than made stricter
//!   behind the operator's back.
//!
//! tokio-postgres knows neither `sslrootcert` nor libpq's `verify-*` modes, so those are taken
//! out of (or rewritten in) the URL here before tokio-postgres parses the rest.

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A database URL, parsed, with the TLS it asks for.
pub struct Target {
    /// The URL without what only TLS uses, as tokio-postgres takes it.
    pub config: tokio_postgres::Config,
    /// `Some` when the URL says `sslmode=require`.
    pub tls: Option<MakeRustlsConnect>,
}

/// Parses `url` (a `postgres://` URL or libpq `key=value` pairs) and builds its TLS set-up.
pub fn target(url: &str) -> Result<Target> {
    let (rest, root_cert) = take_tls_options(url)?;
    let config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| Error::InvalidInput(format!("database URL is invalid: {e}")))?;
    let tls = match config.get_ssl_mode() {
        SslMode::Require => Some(connector(root_cert)?),
        _ if root_cert.is_some() => {
            return Err(Error::InvalidInput(
                "database URL: sslrootcert is only used with sslmode=require".into(),
            ));
        }
        _ => None,
    };
    Ok(Target { config, tls })
}

/// The URL without its `sslrootcert` option (and with `sslmode=verify-full` as `require`),
/// and that option's path.
fn take_tls_options(url: &str) -> Result<(String, Option<PathBuf>)> {
    let mut root_cert = None;
    // What to keep of one `key=value` option (`value` as written: percent-decoded in a URL,
    // unquoted in key=value form): `None` drops it.
    let mut keep = |key: &str, value: &str, pair: &str| -> Result<Option<String>> {
        match (key, value) {
            ("sslrootcert", _) => {
                root_cert = Some(PathBuf::from(value));
                Ok(None)
            }
            ("sslmode", "verify-full") => Ok(Some("sslmode=require".into())),
            ("sslmode", "verify-ca") => Err(Error::InvalidInput(
                "database URL: sslmode=verify-ca is not supported; use sslmode=require (or \
                 verify-full), which verifies the certificate and the host name"
                    .into(),
            )),
            _ => Ok(Some(pair.to_owned())),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|_| {
                            Error::InvalidInput(format!("database URL: {key} is not UTF-8"))
                        })?;
                    kept.extend(keep(key, &value, pair)?);
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (key, value, pair) in key_value_pairs(url)? {
            kept.extend(keep(key, &value, pair)?);
        }
        kept.join(" ")
    };
    Ok((rest, root_cert))
}

/// The options of a libpq `key=value` connection string, as libpq reads them: `key = value`
/// pairs apart by whitespace, a value single-quoted or not, `\\` escaping the next character.
/// Each comes with its text as written, so a quoted value (a password with spaces, or with
/// what looks like another option) is passed on whole.
fn key_value_pairs(text: &str) -> Result<Vec<(&str, String, &str)>> {
    let invalid = |what: &str| Error::InvalidInput(format!("database URL: {what}"));
    let bytes = text.as_bytes();
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut pairs = Vec::new();
    let mut i = skip_space(0);
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[start..i];
        i = skip_space(i);
        if key.is_empty() || bytes.get(i) != Some(&b'=') {
            return Err(invalid(&format!("option `{key}` has no `=`")));
        }
        i = skip_space(i + 1);
        let quoted = bytes.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        let mut value = Vec::new();
        loop {
            match bytes.get(i) {
                None if quoted => {
                    return Err(invalid(&format!("option `{key}`: unterminated quote")));
                }
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    let escaped = bytes
                        .get(i + 1)
                        .ok_or_else(|| invalid(&format!("option `{key}` ends in `\\`")))?;
                    value.push(*escaped);
                    i += 2;
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        let value =
            String::from_utf8(value).map_err(|_| invalid(&format!("{key} is not UTF-8")))?;
        pairs.push((key, value, &text[start..i]));
        i = skip_space(i);
    }
    Ok(pairs)
}

/// A rustls connector trusting the certificates in `root_cert`, else the system's roots.
fn connector(root_cert: Option<PathBuf>) -> Result<MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &root_cert {
        Some(path) => {
            let invalid = |e: &dyn std::fmt::Display| {
                Error::InvalidInput(format!("database URL: sslrootcert {}: {e}", path.display()))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(&e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid(&e))?;
            if certs.is_empty() {
                return Err(invalid(&"no PEM certificate in it"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| invalid(&e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system certificate rustls cannot parse is skipped, as other clients do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(Error::InvalidInput(
                    "database URL says sslmode=require, but no system CA certificates were \
                     found: name the server's CA with sslrootcert=<PEM file>"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Database(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_both_url_forms() {
        let (rest, cert) = take_tls_options(
            "postgres://u:p@db:5432/x?sslmode=require&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/x?sslmode=require");
        assert_eq!(cert, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, cert) = take_tls_options("postgres://db/x?sslrootcert=/ca.pem").unwrap();
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(cert, Some(PathBuf::from("/ca.pem")));
        let (rest, cert) =
            take_tls_options("host=db dbname=x sslmode=require sslrootcert='/ca.pem'").unwrap();
        assert_eq!(rest, "host=db dbname=x sslmode=require");
        assert_eq!(cert, Some(PathBuf::from("/ca.pem")));
        // key=value values are not percent-encoded: a `%` in a path stays.
        let (_, cert) = take_tls_options("host=db sslrootcert=/certs/100%25.pem").unwrap();
        assert_eq!(cert, Some(PathBuf::from("/certs/100%25.pem")));
        let (rest, cert) = take_tls_options("postgres://db/x?application_name=a").unwrap();
        assert_eq!(rest, "postgres://db/x?application_name=a");
        assert_eq!(cert, None);
        let (rest, _) = take_tls_options("postgres://db/x?sslmode=verify-full").unwrap();
        assert_eq!(rest, "postgres://db/x?sslmode=require");
        let (rest, _) = take_tls_options("host=db sslmode=verify-full").unwrap();
        assert_eq!(rest, "host=db sslmode=require");
        assert!(take_tls_options("postgres://db/x?sslmode=verify-ca").is_err());
    }

    #[test]
    fn quoted_key_value_options_pass_through_whole() {
        // A quoted value keeps its whitespace and its look-alike options, as libpq reads it.
        let url = "host=db  user = app password='a\tb  c sslrootcert=/x sslmode=verify-ca \\'q'";
        let (rest, cert) = take_tls_options(url).unwrap();
        assert_eq!(cert, None);
        let config = tokio_postgres::Config::from_str(&rest).unwrap();
        assert_eq!(
            config.get_password(),
            Some(&b"a\tb  c sslrootcert=/x sslmode=verify-ca 'q"[..])
        );
        assert_eq!(config.get_user(), Some("app"));
        assert!(take_tls_options("host=db password='open").is_err());
        assert!(take_tls_options("host=db lonely").is_err());
    }

    #[test]
    fn tls_follows_sslmode() {
        assert!(target("postgres://db/x").unwrap().tls.is_none());
        assert!(
            target("postgres://db/x?sslmode=disable")
                .unwrap()
                .tls
                .is_none()
        );
        let refused = target("postgres://db/x?sslmode=prefer&sslrootcert=/ca.pem");
        assert!(matches!(refused, Err(Error::InvalidInput(_))));
        let missing = target("postgres://db/x?sslmode=require&sslrootcert=/nonexistent.pem");
        assert!(matches!(missing, Err(Error::InvalidInput(m)) if m.contains("nonexistent")));
    }
}

//! Secrets read from files (Docker and Kubernetes secrets): the database password put into
//! the database URL.

use super::{ConfigError, invalid};
use crate::domain::read_secret;

/// `url` with the password read from `file`; the URL must name none.
pub(super) fn with_password_from(url: &str, file: &std::path::Path) -> Result<String, ConfigError> {
    let refuse = |message: String| {
        invalid(
            "ARTIFACTSTORE_DATABASE_PASSWORD_FILE",
            "--database-password-file",
            message,
        )
    };
    let password = read_secret(file).map_err(refuse)?;
    let with = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| refuse(format!("the database URL is not a URL: {e}")))?;
        if parsed.password().is_some() {
            return Err(refuse(
                "the database URL names a password already: take it out of the URL".into(),
            ));
        }
        // tokio-postgres percent-decodes the URL's password: encode every byte that could be
        // read as an escape (a `%41` in the file stays `%41`).
        let encoded =
            percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        parsed
            .set_password(Some(&encoded))
            .map_err(|()| refuse("the database URL has no user and host to add it to".into()))?;
        parsed.to_string()
    } else {
        // `key=value` form.
        let named = crate::db::target(url)
            .map_err(|e| refuse(e.to_string()))?
            .config
            .get_password()
            .is_some();
        if named {
            return Err(refuse(
                "the database URL names a password already: take it out of the URL".into(),
            ));
        }
        let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{url} password='{quoted}'")
    };
    crate::db::target(&with).map_err(|e| refuse(format!("with it, {e}")))?;
    Ok(with)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_goes_into_the_database_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "p@ss:w/rd 'x'%41\n").unwrap();
        let url =
            with_password_from("postgres://app@db:5432/store?sslmode=disable", &file).unwrap();
        assert_eq!(
            url,
            "postgres://app:p%40ss%3Aw%2Frd%20%27x%27%2541@db:5432/store?sslmode=disable"
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p@ss:w/rd 'x'%41"[..]));
        let kv = with_password_from("host=db user=app dbname=store", &file).unwrap();
        let config: tokio_postgres::Config = kv.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p@ss:w/rd 'x'%41"[..]));
        // Whitespace and what looks like another option stay part of the password.
        std::fs::write(&file, "a\tb  c sslrootcert=/x sslmode=verify-ca\n").unwrap();
        let kv = with_password_from("host=db user=app dbname=store", &file).unwrap();
        let target = crate::db::target(&kv).unwrap();
        assert_eq!(
            target.config.get_password(),
            Some(&b"a\tb  c sslrootcert=/x sslmode=verify-ca"[..])
        );
        assert!(target.tls.is_none());
        std::fs::write(&file, "p@ss:w/rd 'x'%41\n").unwrap();
        // A URL naming a password already, and files that hold no secret, are refused.
        for url in ["postgres://app:old@db/store", "host=db password = 'old'"] {
            let twice = with_password_from(url, &file).unwrap_err();
            assert!(
                twice.to_string().contains("names a password already"),
                "{twice}"
            );
        }
        std::fs::write(&file, "\n").unwrap();
        assert!(with_password_from("postgres://app@db/store", &file).is_err());
        std::fs::write(&file, vec![b'x'; 5000]).unwrap();
        assert!(with_password_from("postgres://app@db/store", &file).is_err());
        let missing = with_password_from("postgres://app@db/store", &dir.path().join("no"));
        assert!(missing.unwrap_err().to_string().starts_with(
            "invalid setting ARTIFACTSTORE_DATABASE_PASSWORD_FILE (--database-password-file): "
        ));
    }
}

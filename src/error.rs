//! The library's error: what went wrong, in domain words. The HTTP layer alone maps kinds to
//! status codes.

use crate::identity::ContentAddress;

/// Result with the library error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing does not exist, or belongs to another tenant (the two look the same).
    #[error("{what} not found")]
    NotFound {
        /// e.g. "package 0190…".
        what: String,
    },
    /// The request conflicts with the current state (finalized package, duplicate path...).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this to this thing (a scope the request's state calls for).
    #[error("{0}")]
    Forbidden(String),
    /// The input is malformed or violates a rule.
    #[error("{0}")]
    InvalidInput(String),
    /// The bytes received do not have the digest the client promised.
    #[error("digest mismatch: expected {expected}, received bytes are {actual}")]
    DigestMismatch {
        /// What the client said.
        expected: ContentAddress,
        /// What the bytes hash to (same algorithm as `expected`).
        actual: ContentAddress,
    },
    /// A configured limit was exceeded (the largest file, the most files in a package).
    #[error("{0}")]
    LimitExceeded(String),
    /// The write would take the tenant past one of its quotas; nothing of it is kept.
    #[error("this would take the tenant past its quota of {limit} {}: it holds {used}", .quota.unit())]
    OverQuota {
        /// Which quota.
        quota: QuotaKind,
        /// The quota's limit.
        limit: u64,
        /// What the tenant holds (or has reserved) now, without this write.
        used: u64,
    },
    /// The server's disk is too full to take new writes (reads and deletes go on).
    #[error("{0}")]
    InsufficientStorage(String),
    /// The thing existed but is gone for good (expired).
    #[error("{0}")]
    Gone(String),
    /// A precondition the client stated (`If-Match`) does not hold; nothing was changed.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The storage backend failed.
    #[error("storage backend `{backend}`: {message}")]
    Storage {
        /// Backend id.
        backend: String,
        /// What failed (operator-facing).
        message: String,
        /// The backend is unreachable or overloaded; retrying later may work.
        unavailable: bool,
    },
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(String),
    /// Stored data is inconsistent (e.g. bytes that no longer match their digest).
    #[error("integrity: {0}")]
    Integrity(String),
    /// An upload chunk did not start where the session's bytes end.
    #[error("the upload is at offset {offset}; send the bytes from there")]
    OffsetMismatch {
        /// Bytes the session holds.
        offset: u64,
    },
    /// Too many requests of this kind are open; retrying shortly may work.
    #[error("{0}")]
    Busy(String),
    /// The client's byte stream failed before it ended.
    #[error("request body: {0}")]
    Body(String),
}

/// The quotas a tenant has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Logical bytes: live files plus open upload sessions' declared sizes.
    Bytes,
    /// Live packages.
    Packages,
    /// Open upload sessions.
    UploadSessions,
}

impl QuotaKind {
    /// What the quota counts, in words.
    pub fn unit(self) -> &'static str {
        match self {
            QuotaKind::Bytes => "bytes",
            QuotaKind::Packages => "packages",
            QuotaKind::UploadSessions => "open upload sessions",
        }
    }

    /// The quota's member name in the API (`max_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::Bytes => "bytes",
            QuotaKind::Packages => "packages",
            QuotaKind::UploadSessions => "upload_sessions",
        }
    }
}

impl Error {
    /// A `NotFound` for a kind of thing and its id.
    pub fn not_found(kind: &str, id: impl std::fmt::Display) -> Self {
        Error::NotFound {
            what: format!("{kind} {id}"),
        }
    }

    /// Whether retrying the same request later may succeed: the storage backend or the
    /// database is unavailable (503 to clients).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Storage {
                unavailable: true,
                ..
            } | Error::Database(_)
        )
    }

    /// A storage error that is not about availability.
    pub fn storage(backend: &str, message: impl std::fmt::Display) -> Self {
        Error::Storage {
            backend: backend.to_owned(),
            message: message.to_string(),
            unavailable: false,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's Display hides the server message; include it for operators.
        use tokio_postgres::error::SqlState;
        match e.as_db_error() {
            // Text the database cannot store (NUL, invalid encoding) is bad input, not an outage.
            Some(db)
                if *db.code() == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                    || *db.code() == SqlState::UNTRANSLATABLE_CHARACTER =>
            {
                Error::InvalidInput(format!("text the database cannot store: {}", db.message()))
            }
            Some(db) => Error::Database(format!("{}: {}", db.code().code(), db.message())),
            // The cause says what went wrong below (a TLS handshake's "invalid peer
            // certificate: UnknownIssuer", a refused connection): keep it.
            None => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    let text = cause.to_string();
                    if !message.contains(&text) {
                        message = format!("{message}: {text}");
                    }
                    source = cause.source();
                }
                Error::Database(message)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        match e {
            PoolError::Timeout(TimeoutType::Wait) => Error::Database(
                "connection pool: every connection stayed in use for the whole wait".into(),
            ),
            PoolError::Timeout(TimeoutType::Create) => {
                Error::Database("connection pool: connecting timed out".into())
            }
            PoolError::Backend(e) => match Error::from(e) {
                Error::Database(message) => Error::Database(format!("connection pool: {message}")),
                other => other,
            },
            e => Error::Database(format!("connection pool: {e}")),
        }
    }
}

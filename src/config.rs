//! Settings: flags and `ARTIFACTSTORE_*` environment variables. Every setting is validated up
//! front, each into its type as it is parsed; an invalid one stops start-up with one line
//! naming it.

use crate::registry::Limits;
use clap::ArgAction;
use clap::builder::BoolishValueParser;
use std::error::Error as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// An invalid setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {message}")]
pub struct ConfigError {
    /// `ARTIFACTSTORE_X (--x)`.
    pub name: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn invalid(env: &str, flag: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        name: format!("{env} ({flag})"),
        message: message.into(),
    }
}

/// Service settings as given on the command line or in the environment, each parsed into its
/// type by clap (a bad value stops start-up with one line naming the setting, see
/// [`setting_error`]); [`ServiceArgs::resolve`] checks what spans several settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = "ARTIFACTSTORE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Address of the metrics listener: Prometheus `GET /metrics`, and `/livez` and `/readyz`
    /// for processes without an API (the worker); never the API's. Empty: off. [default:
    /// 127.0.0.1:9464; if that is taken, metrics are off with a warning. An address given
    /// here must be free.]
    #[arg(long, env = "ARTIFACTSTORE_METRICS_LISTEN", value_parser = metrics_listen)]
    pub metrics_listen: Option<MetricsListen>,
    /// Directory for local state: the private PostgreSQL cluster and local blobs.
    #[arg(
        long,
        env = "ARTIFACTSTORE_DATA_DIR",
        default_value = "./.artifactstore",
        value_parser = non_empty_path
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL. Without it a private cluster is started under the data directory.
    #[arg(
        long,
        env = "ARTIFACTSTORE_DATABASE_URL",
        hide_env_values = true,
        value_parser = database_url
    )]
    pub database_url: Option<DatabaseUrl>,
    /// A file holding the database password (a Docker or Kubernetes secret); it goes into the
    /// database URL, which then must not name one. One trailing newline is ignored.
    #[arg(long, env = "ARTIFACTSTORE_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    /// The private cluster's directory [default: <data-dir>/postgres]. Keep it on another
    /// filesystem than the blobs and the upload spools, so that filling them cannot stop the
    /// database.
    #[arg(long, env = "ARTIFACTSTORE_POSTGRES_DIR")]
    pub postgres_dir: Option<PathBuf>,
    /// Root of the local storage backend [default: <data-dir>/blobs].
    #[arg(long, env = "ARTIFACTSTORE_STORAGE_LOCAL_ROOT")]
    pub storage_local_root: Option<PathBuf>,
    /// A TOML file of storage backends by id, the default backend and routing rules (see
    /// docs/OPERATOR.md). Without it every blob goes to the local backend.
    #[arg(long, env = "ARTIFACTSTORE_STORAGE_FILE")]
    pub storage_file: Option<PathBuf>,
    /// The backend new blobs go to when no route matches; overrides the file's
    /// `default_backend`.
    #[arg(long, env = "ARTIFACTSTORE_STORAGE_DEFAULT")]
    pub storage_default: Option<String>,
    /// Apply pending migrations when the server starts.
    #[arg(long, env = "ARTIFACTSTORE_MIGRATE_ON_START", default_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "ARTIFACTSTORE_DB_POOL_SIZE", default_value = "32", value_parser = within::<1, 1000>)]
    pub db_pool_size: u64,
    /// Seconds a request waits for a database connection (every one in use, or the database
    /// not answering) before it is answered 503 with `Retry-After`.
    #[arg(long, env = "ARTIFACTSTORE_DB_POOL_TIMEOUT_SECONDS", default_value = "5", value_parser = within::<1, 3600>)]
    pub db_pool_timeout_seconds: u64,
    /// Largest file accepted (bytes, or with a unit: 500MiB, 5GiB).
    #[arg(long, env = "ARTIFACTSTORE_MAX_FILE_SIZE", default_value = "5GiB", value_parser = ByteSize::positive)]
    pub max_file_size: ByteSize,
    /// Most files one package may hold.
    #[arg(long, env = "ARTIFACTSTORE_MAX_FILES_PER_PACKAGE", default_value = "10000", value_parser = within::<1, { u64::MAX }>)]
    pub max_files_per_package: u64,
    /// Bearer tokens for quick set-ups: `tenant:scope+scope:token,...` (scopes: read, write,
    /// admin). Without any tokens every request is the `default` tenant (development mode).
    #[arg(long, env = "ARTIFACTSTORE_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// A TOML file of `[[token]]` entries with `tenant`, `scopes`, `sha256` (hex of the token)
    /// and optionally `name`: the production way (only hashes on disk).
    #[arg(long, env = "ARTIFACTSTORE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Allow reads without a token (as the `default` tenant).
    #[arg(long, env = "ARTIFACTSTORE_ANON_READ", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub anon_read: bool,
    /// Seconds an upload session lives without being completed.
    #[arg(long, env = "ARTIFACTSTORE_UPLOAD_TTL_SECONDS", default_value = "86400", value_parser = within::<1, { 30 * 86400 }>)]
    pub upload_ttl_seconds: u64,
    /// Upload sessions that may stream into their storage backend as their chunks arrive, at
    /// once (S3: each holds a request open, and with signed bodies up to
    /// (1 + multipart_concurrency) parts in memory). Others are sent at completion. 0: never.
    #[arg(long, env = "ARTIFACTSTORE_MAX_WRITE_THROUGH_UPLOADS", default_value = "16", value_parser = within::<0, 10_000>)]
    pub max_write_through_uploads: u64,
    /// Open upload sessions a tenant may have when its quota does not say (see
    /// `PUT /tenants/{tenant}/quota`).
    #[arg(long, env = "ARTIFACTSTORE_DEFAULT_MAX_UPLOAD_SESSIONS", default_value = "1000", value_parser = within::<0, 10_000_000>)]
    pub default_max_upload_sessions: u64,
    /// Free space (bytes, or with a unit) the filesystems of the local backends and of the
    /// upload spools must keep: below it new writes get 507, reads, finalize and deletes go on.
    #[arg(long, env = "ARTIFACTSTORE_MIN_FREE_BYTES", default_value = "1GiB")]
    pub min_free_bytes: ByteSize,
    /// Largest JSON request body (bytes, or with a unit). File bytes are streamed and bounded
    /// by `--max-file-size` instead.
    #[arg(long, env = "ARTIFACTSTORE_MAX_JSON_BODY", default_value = "8MiB", value_parser = ByteSize::positive)]
    pub max_json_body: ByteSize,
    /// Seconds a connection has to send a whole request head (from when it is accepted, and
    /// between requests on a kept-alive connection); it is closed after that.
    #[arg(long, env = "ARTIFACTSTORE_HEADER_READ_TIMEOUT_SECONDS", default_value = "30", value_parser = within::<1, 3600>)]
    pub header_read_timeout_seconds: u64,
    /// Seconds a request body may send nothing before the request ends (an upload session
    /// keeps the bytes that arrived).
    #[arg(long, env = "ARTIFACTSTORE_BODY_IDLE_TIMEOUT_SECONDS", default_value = "60", value_parser = within::<1, 3600>)]
    pub body_idle_timeout_seconds: u64,
    /// Most client connections open at once; further ones wait to be accepted.
    #[arg(long, env = "ARTIFACTSTORE_MAX_CONNECTIONS", default_value = "10000", value_parser = within::<1, 1_000_000>)]
    pub max_connections: u64,
    /// Most `GET /events` requests open at once (429 beyond).
    #[arg(long, env = "ARTIFACTSTORE_MAX_LONG_POLLS", default_value = "10000", value_parser = within::<1, 1_000_000>)]
    pub max_long_polls: u64,
    /// Most `GET /events` requests one tenant may have open at once (429 beyond).
    #[arg(long, env = "ARTIFACTSTORE_MAX_LONG_POLLS_PER_TENANT", default_value = "1000", value_parser = within::<1, 1_000_000>)]
    pub max_long_polls_per_tenant: u64,
    /// Allow serving without tokens on an address other than loopback: every caller is then
    /// an admin of tenant `default`. Without tokens and without this, `serve` listens on
    /// loopback only.
    #[arg(long, env = "ARTIFACTSTORE_DEV_MODE", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub dev_mode: bool,
    /// Seconds to wait for in-flight requests at shutdown.
    #[arg(
        long,
        env = "ARTIFACTSTORE_SHUTDOWN_GRACE_SECONDS",
        default_value = "30"
    )]
    pub shutdown_grace_seconds: u64,
}

/// A whole number from `MIN` to `MAX`; whitespace around it is ignored (a value read from a
/// file often ends in a newline).
pub fn within<const MIN: u64, const MAX: u64>(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if (MIN..=MAX).contains(&n) => Ok(n),
        _ if MAX == u64::MAX => Err(format!("`{text}` is not a whole number of at least {MIN}")),
        _ => Err(format!(
            "`{text}` is not a whole number from {MIN} to {MAX}"
        )),
    }
}

/// A size in bytes, written as a number or with a unit: `1048576`, `500MiB`, `5GiB`, `10MB`
/// (binary units for `K/M/G/T[iB]`, decimal for `KB/MB/GB/TB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_size(text)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is not a size like 5GiB, 10MB or 1048576"))
    }
}

impl ByteSize {
    /// A size of at least one byte.
    pub fn positive(text: &str) -> Result<Self, String> {
        match text.parse()? {
            ByteSize(0) => Err("must be at least one byte".into()),
            size => Ok(size),
        }
    }
}

/// A PostgreSQL URL, parsed with its TLS set-up (a `sslrootcert` file that cannot be read fails
/// at start, not at the first connection).
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    /// The URL may hold a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

fn database_url(text: &str) -> Result<DatabaseUrl, String> {
    crate::db::target(text).map_err(|e| format!("not a usable PostgreSQL URL: {e}"))?;
    Ok(DatabaseUrl(text.to_owned()))
}

/// Where the metrics listener listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics listener.
    Off,
    /// The default address, [`DEFAULT_METRICS_LISTEN`]: taken only if free.
    Default,
    /// An address given: it must be free.
    At(SocketAddr),
}

/// The metrics listener's default address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

fn metrics_listen(text: &str) -> Result<MetricsListen, String> {
    if text.trim().is_empty() {
        return Ok(MetricsListen::Off);
    }
    text.parse()
        .map(MetricsListen::At)
        .map_err(|e| format!("`{text}` is not an address (host:port) or empty: {e}"))
}

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 4096;

/// The contents of a secret file, without one trailing newline.
pub fn read_secret(file: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_SECRET_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "{} is over {MAX_SECRET_BYTES} bytes: not a secret",
            file.display()
        ));
    }
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    Ok(text.to_owned())
}

/// `url` with the password read from `file`; the URL must name none.
fn with_password_from(url: &str, file: &std::path::Path) -> Result<String, ConfigError> {
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
        if url.split_whitespace().any(|kv| kv.starts_with("password=")) {
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

fn non_empty_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(PathBuf::from(text))
}

/// The one line a bad setting stops start-up with: `invalid setting ARTIFACTSTORE_X (--x):
/// why`, for a value clap refused (from a flag or from the environment, which clap's own
/// message does not say). `None` for other errors (a flag that does not exist, `--help`).
pub fn setting_error(error: &clap::Error, command: &clap::Command) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.trim_start_matches("--");
    let env = find_env(command, long)?;
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let why = error
        .source()
        .map(|e| e.to_string())
        .unwrap_or_else(|| format!("`{value}` is not one of the allowed values"));
    Some(format!("invalid setting {env} (--{long}): {why}"))
}

fn find_env(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_env(sub, long))
        })
}

/// Bounds that keep slow or idle clients from holding the server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a connection has to send a whole request head.
    pub header_read_timeout: Duration,
    /// Time a request body may send nothing.
    pub body_idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Validated service settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The metrics listener.
    pub metrics_listen: MetricsListen,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL, if not the private cluster.
    pub database_url: Option<String>,
    /// The private cluster's directory, if not `<data_dir>/postgres`.
    pub postgres_dir: Option<PathBuf>,
    /// Local backend root.
    pub storage_local_root: PathBuf,
    /// Storage backends and routing (from the storage file, or just `local`).
    pub storage: crate::storage::config::StorageConfig,
    /// Override of the default backend.
    pub storage_default: Option<String>,
    /// Migrate at server start.
    pub migrate_on_start: bool,
    /// Pool size.
    pub db_pool_size: usize,
    /// How long a caller waits for a pooled connection.
    pub db_pool_timeout: Duration,
    /// Bounds on connections and request bodies.
    pub http: HttpLimits,
    /// Bounds on open `GET /events` requests.
    pub long_polls: crate::events::LongPollLimits,
    /// Serving without tokens on a non-loopback address is allowed.
    pub dev_mode: bool,
    /// Limits.
    pub limits: Limits,
    /// Shutdown grace.
    pub shutdown_grace: std::time::Duration,
    /// Largest JSON request body, in bytes.
    pub max_json_body: u64,
    /// Tokens.
    pub tokens: std::sync::Arc<crate::auth::TokenStore>,
}

impl ServiceArgs {
    /// The database URL, with the password from ARTIFACTSTORE_DATABASE_PASSWORD_FILE put in.
    fn resolved_database_url(&self) -> Result<Option<String>, ConfigError> {
        let database_url = self
            .database_url
            .as_ref()
            .map(|url| url.0.clone())
            .filter(|url| !url.is_empty());
        match (
            database_url,
            self.database_password_file
                .as_deref()
                .filter(|f| !f.as_os_str().is_empty()),
        ) {
            (Some(url), Some(file)) => with_password_from(&url, file).map(Some),
            (None, Some(_)) => Err(invalid(
                "ARTIFACTSTORE_DATABASE_PASSWORD_FILE",
                "--database-password-file",
                "is only used with ARTIFACTSTORE_DATABASE_URL (the private cluster has a \
                 password of its own)",
            )),
            (url, None) => Ok(url),
        }
    }

    /// Checks what spans several settings (tokens, the storage file and its default backend)
    /// and gathers them.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let tokens = crate::auth::TokenStore::from_settings(
            self.tokens.as_deref(),
            self.tokens_file.as_deref(),
            self.anon_read,
        )
        .map_err(|e| {
            let flag = match e.setting {
                "ARTIFACTSTORE_TOKENS_FILE" => "--tokens-file",
                _ => "--tokens",
            };
            invalid(e.setting, flag, e.message)
        })?;
        let storage = match &self.storage_file {
            Some(path) => crate::storage::config::StorageConfig::load(path).map_err(|message| {
                invalid("ARTIFACTSTORE_STORAGE_FILE", "--storage-file", message)
            })?,
            None => Default::default(),
        };
        let storage_default = self.storage_default.clone().filter(|d| !d.is_empty());
        if let Some(id) = &storage_default
            && id != crate::storage::config::LOCAL_BACKEND
            && !storage.backends.contains_key(id)
        {
            return Err(invalid(
                "ARTIFACTSTORE_STORAGE_DEFAULT",
                "--storage-default",
                format!("`{id}` is not a configured backend"),
            ));
        }
        let database_url = self.resolved_database_url()?;
        let seconds = Duration::from_secs;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Settings {
            tokens: std::sync::Arc::new(tokens),
            storage,
            storage_default,
            listen: self.listen,
            metrics_listen: self.metrics_listen.unwrap_or(MetricsListen::Default),
            storage_local_root: self
                .storage_local_root
                .clone()
                .unwrap_or_else(|| self.data_dir.join("blobs")),
            data_dir: self.data_dir.clone(),
            postgres_dir: self
                .postgres_dir
                .clone()
                .filter(|d| !d.as_os_str().is_empty()),
            database_url,
            migrate_on_start: self.migrate_on_start,
            db_pool_size: count(self.db_pool_size),
            db_pool_timeout: seconds(self.db_pool_timeout_seconds),
            http: HttpLimits {
                header_read_timeout: seconds(self.header_read_timeout_seconds),
                body_idle_timeout: seconds(self.body_idle_timeout_seconds),
                max_connections: count(self.max_connections),
            },
            long_polls: crate::events::LongPollLimits {
                total: count(self.max_long_polls),
                per_tenant: count(self.max_long_polls_per_tenant),
            },
            dev_mode: self.dev_mode,
            limits: Limits {
                max_file_size: self.max_file_size.0,
                max_files_per_package: self.max_files_per_package,
                upload_ttl_seconds: self.upload_ttl_seconds,
                max_write_through_uploads: count(self.max_write_through_uploads),
                default_max_upload_sessions: self.default_max_upload_sessions,
                min_free_bytes: self.min_free_bytes.0,
            },
            shutdown_grace: seconds(self.shutdown_grace_seconds),
            max_json_body: self.max_json_body.0,
        })
    }
}

/// Parses `1048576`, `500MiB`, `5GiB`, `10MB`, `1T`... (binary units for `K/M/G/T[iB]`, decimal
/// for `KB/MB/GB/TB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServiceArgs,
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5GiB"), Some(5 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("1.5GiB"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999T"), None);
        // Found by fuzzing: a sign is not part of a size (u64's own parser takes `+2`).
        assert_eq!(parse_size("+2"), None);
        assert_eq!(parse_size("-2"), None);
        assert_eq!(parse_size(" 2 "), Some(2));
    }

    fn refusal(args: &[&str]) -> String {
        use clap::CommandFactory;
        let error = Cli::try_parse_from(args).err().expect("refused");
        setting_error(&error, &Cli::command()).unwrap_or_else(|| error.to_string())
    }

    #[test]
    fn errors_name_the_setting() {
        let err = refusal(&["x", "--listen", "nope"]);
        assert!(
            err.starts_with("invalid setting ARTIFACTSTORE_LISTEN (--listen): "),
            "{err}"
        );
        let err = refusal(&["x", "--max-file-size", "lots"]);
        assert!(
            err.starts_with("invalid setting ARTIFACTSTORE_MAX_FILE_SIZE (--max-file-size): ")
                && err.contains("`lots` is not a size"),
            "{err}"
        );
        let err = refusal(&["x", "--db-pool-size", "0"]);
        assert!(
            err.contains("ARTIFACTSTORE_DB_POOL_SIZE") && err.contains("from 1 to 1000"),
            "{err}"
        );
        // Whitespace around a number is not part of it (values read from files end in one).
        let cli = Cli::try_parse_from(["x", "--db-pool-timeout-seconds", " 7\n"]).unwrap();
        assert_eq!(cli.args.db_pool_timeout_seconds, 7);
        let err = refusal(&["x", "--anon-read", "perhaps"]);
        assert!(err.contains("ARTIFACTSTORE_ANON_READ"), "{err}");
        let err = refusal(&["x", "--max-json-body", "0"]);
        assert!(err.contains("at least one byte"), "{err}");
        let err = refusal(&["x", "--data-dir", ""]);
        assert!(err.contains("ARTIFACTSTORE_DATA_DIR"), "{err}");
    }

    #[test]
    fn defaults_resolve() {
        let s = Cli::parse_from(["x"]).args.resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(
            s.storage_local_root,
            PathBuf::from("./.artifactstore/blobs")
        );
        assert_eq!(s.limits.max_file_size, 5 << 30);
    }
}

#[cfg(test)]
mod secret_tests {
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
        // A URL naming a password already, and files that hold no secret, are refused.
        let twice = with_password_from("postgres://app:old@db/store", &file).unwrap_err();
        assert!(
            twice.to_string().contains("names a password already"),
            "{twice}"
        );
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

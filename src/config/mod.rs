//! Settings: flags and `ARTIFACTSTORE_*` environment variables. Every setting is validated up
//! front, each into its type as it is parsed; an invalid one stops start-up with one line
//! naming it.

use crate::registry::Limits;
use clap::ArgAction;
use clap::builder::BoolishValueParser;
use std::error::Error as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod secrets;
mod values;

use secrets::with_password_from;
pub use values::{
    ByteSize, DEFAULT_METRICS_LISTEN, DatabaseUrl, MetricsListen, parse_size, within,
};
use values::{database_url, metrics_listen, non_empty_path};

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
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
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
    /// Upload chunks that may stream into an S3 backend at once in this process (an upload
    /// session's chunks go into its backend as they arrive, so that any server can take the
    /// next one): each holds up to (1 + `multipart_concurrency`) parts of
    /// `multipart_chunk_bytes` in memory. A tenant takes at most half; beyond that a chunk
    /// waits up to 30 s for a slot, then is refused as busy (429 with Retry-After).
    #[arg(long, env = "ARTIFACTSTORE_MAX_STREAMING_CHUNKS", default_value = "16", value_parser = within::<1, 10_000>)]
    pub max_streaming_chunks: u64,
    /// Open upload sessions a tenant may have when its quota does not say (see
    /// `PUT /tenants/{tenant}/quota`).
    #[arg(long, env = "ARTIFACTSTORE_DEFAULT_MAX_UPLOAD_SESSIONS", default_value = "1000", value_parser = within::<0, 10_000_000>)]
    pub default_max_upload_sessions: u64,
    /// Tasks that record small ingests (up to 1 MiB) in batches, one transaction per batch:
    /// while one batch commits, the next forms. Fewer make larger batches: with several
    /// servers on one database, 1 each keeps the fleet's batches as large as one server's.
    #[arg(long, env = "ARTIFACTSTORE_GROUP_COMMITTERS", default_value = "2", value_parser = within::<1, 16>)]
    pub group_committers: u64,
    /// Free space (bytes, or with a unit) the filesystems of the local backends and of the
    /// upload spools must keep: below it new writes get 507, reads, finalize and deletes go on.
    #[arg(long, env = "ARTIFACTSTORE_MIN_FREE_BYTES", default_value = "1GiB")]
    pub min_free_bytes: ByteSize,
    /// Largest JSON request body (bytes, or with a unit). File bytes are streamed and bounded
    /// by `--max-file-size` instead.
    #[arg(long, env = "ARTIFACTSTORE_MAX_JSON_BODY", default_value = "8MiB", value_parser = ByteSize::positive)]
    pub max_json_body: ByteSize,
    /// Largest provenance a producer may attach at finalize, measured in canonical JSON
    /// (bytes, or with a unit). It is kept in the manifest, the finalize event and the
    /// attestation, so it is read on every manifest download.
    #[arg(long, env = "ARTIFACTSTORE_MAX_PROVENANCE", default_value = "64KiB", value_parser = ByteSize::positive)]
    pub max_provenance: ByteSize,
    /// Places for retrieval records: one per read in flight (a download holds its place until
    /// its body ends) or waiting to be written. A tenant takes at most half; past that, or
    /// past the queue's end, a read waits for a place (`--retrieval-wait-seconds`), then is
    /// refused (429): reads are never served unrecorded.
    #[arg(long, env = "ARTIFACTSTORE_RETRIEVAL_QUEUE", default_value = "10000", value_parser = within::<1, 1_000_000>)]
    pub retrieval_queue: u64,
    /// Payload bytes a page of `GET /events` holds, at most: a page ends after the event that
    /// takes it past this (one event always comes, however large; a finalize event carries
    /// its manifest). Bytes, or with a unit.
    #[arg(long, env = "ARTIFACTSTORE_MAX_EVENT_PAGE_BYTES", default_value = "16MiB", value_parser = ByteSize::positive)]
    pub max_event_page_bytes: ByteSize,
    /// Seconds a read waits for a place in the retrieval queue before it is refused (429 with
    /// `Retry-After`).
    #[arg(long, env = "ARTIFACTSTORE_RETRIEVAL_WAIT_SECONDS", default_value = "10", value_parser = within::<1, 300>)]
    pub retrieval_wait_seconds: u64,
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
    /// Database URL, if not the private cluster (its `Debug` never prints it: it may hold a
    /// password).
    pub database_url: Option<DatabaseUrl>,
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
    /// Largest producer provenance, in bytes of canonical JSON.
    pub max_provenance: u64,
    /// Retrieval records waiting to be written, at most.
    pub retrieval_queue: usize,
    /// How long a read waits for a place in the retrieval queue.
    pub retrieval_wait: std::time::Duration,
    /// Payload bytes an event page holds, at most.
    pub max_event_page_bytes: u64,
    /// Tokens.
    pub tokens: std::sync::Arc<crate::auth::TokenStore>,
}

impl ServiceArgs {
    /// The database URL, with the password from ARTIFACTSTORE_DATABASE_PASSWORD_FILE put in.
    fn resolved_database_url(&self) -> Result<Option<DatabaseUrl>, ConfigError> {
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
            (Some(url), Some(file)) => with_password_from(&url, file).map(|u| Some(DatabaseUrl(u))),
            (None, Some(_)) => Err(invalid(
                "ARTIFACTSTORE_DATABASE_PASSWORD_FILE",
                "--database-password-file",
                "is only used with ARTIFACTSTORE_DATABASE_URL (the private cluster has a \
                 password of its own)",
            )),
            (url, None) => Ok(url.map(DatabaseUrl)),
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
                max_streaming_chunks: count(self.max_streaming_chunks),
                default_max_upload_sessions: self.default_max_upload_sessions,
                min_free_bytes: self.min_free_bytes.0,
                group_committers: count(self.group_committers),
            },
            shutdown_grace: seconds(self.shutdown_grace_seconds),
            max_json_body: self.max_json_body.0,
            max_provenance: self.max_provenance.0,
            retrieval_queue: count(self.retrieval_queue),
            retrieval_wait: seconds(self.retrieval_wait_seconds),
            max_event_page_bytes: self.max_event_page_bytes.0,
        })
    }
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
        let err = refusal(&["x", "--group-committers", "17"]);
        assert!(
            err.contains("ARTIFACTSTORE_GROUP_COMMITTERS") && err.contains("from 1 to 16"),
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
    fn settings_never_print_the_database_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "fromthefile\n").unwrap();
        let inline = Cli::parse_from(["x", "--database-url", "postgres://app:inlinepw@db/x"]);
        let from_file = Cli::parse_from([
            "x",
            "--database-url",
            "postgres://app@db/x",
            "--database-password-file",
            file.to_str().unwrap(),
        ]);
        for (cli, password) in [(inline, "inlinepw"), (from_file, "fromthefile")] {
            let settings = cli.args.resolve().unwrap();
            assert!(settings.database_url.as_ref().unwrap().0.contains(password));
            let printed = format!("{settings:?}");
            assert!(!printed.contains(password), "{printed}");
        }
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

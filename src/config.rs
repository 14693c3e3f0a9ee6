//! Settings: flags and `ARTIFACTSTORE_*` environment variables. Every setting is validated up
//! front; an invalid one stops start-up with one line naming it.

use crate::registry::Limits;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
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

/// Raw service settings as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = "ARTIFACTSTORE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Directory for local state: the private PostgreSQL cluster and local blobs.
    #[arg(
        long,
        env = "ARTIFACTSTORE_DATA_DIR",
        default_value = "./.artifactstore"
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL. Without it a private cluster is started under the data directory.
    #[arg(long, env = "ARTIFACTSTORE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
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
    #[arg(long, env = "ARTIFACTSTORE_MIGRATE_ON_START", default_value = "true")]
    pub migrate_on_start: String,
    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "ARTIFACTSTORE_DB_POOL_SIZE", default_value = "32")]
    pub db_pool_size: String,
    /// Seconds a request waits for a database connection (every one in use, or the database
    /// not answering) before it is answered 503 with `Retry-After`.
    #[arg(
        long,
        env = "ARTIFACTSTORE_DB_POOL_TIMEOUT_SECONDS",
        default_value = "5"
    )]
    pub db_pool_timeout_seconds: String,
    /// Largest file accepted (bytes, or with a unit: 500MiB, 5GiB).
    #[arg(long, env = "ARTIFACTSTORE_MAX_FILE_SIZE", default_value = "5GiB")]
    pub max_file_size: String,
    /// Most files one package may hold.
    #[arg(
        long,
        env = "ARTIFACTSTORE_MAX_FILES_PER_PACKAGE",
        default_value = "10000"
    )]
    pub max_files_per_package: String,
    /// Bearer tokens for quick set-ups: `tenant:scope+scope:token,...` (scopes: read, write,
    /// admin). Without any tokens every request is the `default` tenant (development mode).
    #[arg(long, env = "ARTIFACTSTORE_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// A TOML file of `[[token]]` entries with `tenant`, `scopes`, `sha256` (hex of the token)
    /// and optionally `name`: the production way (only hashes on disk).
    #[arg(long, env = "ARTIFACTSTORE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Allow reads without a token (as the `default` tenant).
    #[arg(long, env = "ARTIFACTSTORE_ANON_READ", default_value = "false")]
    pub anon_read: String,
    /// Seconds an upload session lives without being completed.
    #[arg(
        long,
        env = "ARTIFACTSTORE_UPLOAD_TTL_SECONDS",
        default_value = "86400"
    )]
    pub upload_ttl_seconds: String,
    /// Upload sessions that may stream into their storage backend as their chunks arrive, at
    /// once (S3: each holds a request open, and with signed bodies up to
    /// (1 + multipart_concurrency) parts in memory). Others are sent at completion. 0: never.
    #[arg(
        long,
        env = "ARTIFACTSTORE_MAX_WRITE_THROUGH_UPLOADS",
        default_value = "16"
    )]
    pub max_write_through_uploads: String,
    /// Open upload sessions a tenant may have when its quota does not say (see
    /// `PUT /tenants/{tenant}/quota`).
    #[arg(
        long,
        env = "ARTIFACTSTORE_DEFAULT_MAX_UPLOAD_SESSIONS",
        default_value = "1000"
    )]
    pub default_max_upload_sessions: String,
    /// Free space (bytes, or with a unit) the filesystems of the local backends and of the
    /// upload spools must keep: below it new writes get 507, reads, finalize and deletes go on.
    #[arg(long, env = "ARTIFACTSTORE_MIN_FREE_BYTES", default_value = "1GiB")]
    pub min_free_bytes: String,
    /// Largest JSON request body (bytes, or with a unit). File bytes are streamed and bounded
    /// by `--max-file-size` instead.
    #[arg(long, env = "ARTIFACTSTORE_MAX_JSON_BODY", default_value = "8MiB")]
    pub max_json_body: String,
    /// Seconds a connection has to send a whole request head (from when it is accepted, and
    /// between requests on a kept-alive connection); it is closed after that.
    #[arg(
        long,
        env = "ARTIFACTSTORE_HEADER_READ_TIMEOUT_SECONDS",
        default_value = "30"
    )]
    pub header_read_timeout_seconds: String,
    /// Seconds a request body may send nothing before the request ends (an upload session
    /// keeps the bytes that arrived).
    #[arg(
        long,
        env = "ARTIFACTSTORE_BODY_IDLE_TIMEOUT_SECONDS",
        default_value = "60"
    )]
    pub body_idle_timeout_seconds: String,
    /// Most client connections open at once; further ones wait to be accepted.
    #[arg(long, env = "ARTIFACTSTORE_MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: String,
    /// Most `GET /events` requests open at once (429 beyond).
    #[arg(long, env = "ARTIFACTSTORE_MAX_LONG_POLLS", default_value = "10000")]
    pub max_long_polls: String,
    /// Most `GET /events` requests one tenant may have open at once (429 beyond).
    #[arg(
        long,
        env = "ARTIFACTSTORE_MAX_LONG_POLLS_PER_TENANT",
        default_value = "1000"
    )]
    pub max_long_polls_per_tenant: String,
    /// Allow serving without tokens on an address other than loopback: every caller is then
    /// an admin of tenant `default`. Without tokens and without this, `serve` listens on
    /// loopback only.
    #[arg(long, env = "ARTIFACTSTORE_DEV_MODE", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub dev_mode: String,
    /// Seconds to wait for in-flight requests at shutdown.
    #[arg(
        long,
        env = "ARTIFACTSTORE_SHUTDOWN_GRACE_SECONDS",
        default_value = "30"
    )]
    pub shutdown_grace_seconds: String,
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
    /// Validates every setting.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            invalid(
                "ARTIFACTSTORE_LISTEN",
                "--listen",
                format!("`{}` is not an address like 127.0.0.1:8000", self.listen),
            )
        })?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "ARTIFACTSTORE_DATA_DIR",
                "--data-dir",
                "must not be empty",
            ));
        }
        let database_url = match self.database_url.as_deref() {
            None | Some("") => None,
            Some(url) => {
                // Parsed here, TLS set-up included (a `sslrootcert` file that cannot be read
                // fails at start, not at the first connection).
                crate::db::target(url).map_err(|e| {
                    invalid(
                        "ARTIFACTSTORE_DATABASE_URL",
                        "--database-url",
                        format!("not a usable PostgreSQL URL: {e}"),
                    )
                })?;
                Some(url.to_owned())
            }
        };
        let migrate_on_start = parse_bool(&self.migrate_on_start).ok_or_else(|| {
            invalid(
                "ARTIFACTSTORE_MIGRATE_ON_START",
                "--migrate-on-start",
                "expected true or false",
            )
        })?;
        let db_pool_size = self
            .db_pool_size
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "ARTIFACTSTORE_DB_POOL_SIZE",
                    "--db-pool-size",
                    "expected a number from 1 to 1000",
                )
            })?;
        let db_pool_timeout = seconds(
            &self.db_pool_timeout_seconds,
            "ARTIFACTSTORE_DB_POOL_TIMEOUT_SECONDS",
            "--db-pool-timeout-seconds",
            1..=3600,
        )?;
        let http = HttpLimits {
            header_read_timeout: seconds(
                &self.header_read_timeout_seconds,
                "ARTIFACTSTORE_HEADER_READ_TIMEOUT_SECONDS",
                "--header-read-timeout-seconds",
                1..=3600,
            )?,
            body_idle_timeout: seconds(
                &self.body_idle_timeout_seconds,
                "ARTIFACTSTORE_BODY_IDLE_TIMEOUT_SECONDS",
                "--body-idle-timeout-seconds",
                1..=3600,
            )?,
            max_connections: number(
                &self.max_connections,
                "ARTIFACTSTORE_MAX_CONNECTIONS",
                "--max-connections",
                1..=1_000_000,
            )?,
        };
        let long_polls = crate::events::LongPollLimits {
            total: number(
                &self.max_long_polls,
                "ARTIFACTSTORE_MAX_LONG_POLLS",
                "--max-long-polls",
                1..=1_000_000,
            )?,
            per_tenant: number(
                &self.max_long_polls_per_tenant,
                "ARTIFACTSTORE_MAX_LONG_POLLS_PER_TENANT",
                "--max-long-polls-per-tenant",
                1..=1_000_000,
            )?,
        };
        let dev_mode = parse_bool(&self.dev_mode).ok_or_else(|| {
            invalid(
                "ARTIFACTSTORE_DEV_MODE",
                "--dev-mode",
                "expected true or false",
            )
        })?;
        let max_file_size = parse_size(&self.max_file_size)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "ARTIFACTSTORE_MAX_FILE_SIZE",
                    "--max-file-size",
                    format!(
                        "`{}` is not a size like 5GiB or 1048576",
                        self.max_file_size
                    ),
                )
            })?;
        let max_files_per_package = self
            .max_files_per_package
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "ARTIFACTSTORE_MAX_FILES_PER_PACKAGE",
                    "--max-files-per-package",
                    "expected a positive number",
                )
            })?;
        let upload_ttl_seconds = self
            .upload_ttl_seconds
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=30 * 86400).contains(n))
            .ok_or_else(|| {
                invalid(
                    "ARTIFACTSTORE_UPLOAD_TTL_SECONDS",
                    "--upload-ttl-seconds",
                    "expected seconds from 1 to 2592000",
                )
            })?;
        let max_write_through_uploads = self
            .max_write_through_uploads
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| {
                invalid(
                    "ARTIFACTSTORE_MAX_WRITE_THROUGH_UPLOADS",
                    "--max-write-through-uploads",
                    "expected a number from 0 to 10000",
                )
            })?;
        let default_max_upload_sessions = number(
            &self.default_max_upload_sessions,
            "ARTIFACTSTORE_DEFAULT_MAX_UPLOAD_SESSIONS",
            "--default-max-upload-sessions",
            0..=10_000_000,
        )?;
        let min_free_bytes = parse_size(&self.min_free_bytes).ok_or_else(|| {
            invalid(
                "ARTIFACTSTORE_MIN_FREE_BYTES",
                "--min-free-bytes",
                format!("`{}` is not a size like 1GiB or 0", self.min_free_bytes),
            )
        })?;
        let max_json_body = parse_size(&self.max_json_body)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "ARTIFACTSTORE_MAX_JSON_BODY",
                    "--max-json-body",
                    format!(
                        "`{}` is not a size like 8MiB or 1048576",
                        self.max_json_body
                    ),
                )
            })?;
        let grace = self.shutdown_grace_seconds.parse::<u64>().map_err(|_| {
            invalid(
                "ARTIFACTSTORE_SHUTDOWN_GRACE_SECONDS",
                "--shutdown-grace-seconds",
                "expected whole seconds",
            )
        })?;
        let anon_read = parse_bool(&self.anon_read).ok_or_else(|| {
            invalid(
                "ARTIFACTSTORE_ANON_READ",
                "--anon-read",
                "expected true or false",
            )
        })?;
        let tokens = crate::auth::TokenStore::from_settings(
            self.tokens.as_deref(),
            self.tokens_file.as_deref(),
            anon_read,
        )
        .map_err(|message| {
            let (env, flag) = if message.starts_with("ARTIFACTSTORE_TOKENS_FILE") {
                ("ARTIFACTSTORE_TOKENS_FILE", "--tokens-file")
            } else {
                ("ARTIFACTSTORE_TOKENS", "--tokens")
            };
            invalid(env, flag, message)
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
        Ok(Settings {
            tokens: std::sync::Arc::new(tokens),
            storage,
            storage_default,
            listen,
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
            migrate_on_start,
            db_pool_size,
            db_pool_timeout,
            http,
            long_polls,
            dev_mode,
            limits: Limits {
                max_file_size,
                max_files_per_package,
                upload_ttl_seconds,
                max_write_through_uploads,
                default_max_upload_sessions,
                min_free_bytes,
            },
            shutdown_grace: std::time::Duration::from_secs(grace),
            max_json_body,
        })
    }
}

/// A whole number in `range`, or an error naming the setting.
fn number<T>(text: &str, env: &str, flag: &str, range: RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display,
{
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            invalid(
                env,
                flag,
                format!(
                    "`{text}` is not a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// Whole seconds in `range`.
fn seconds(
    text: &str,
    env: &str,
    flag: &str,
    range: RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    number(text, env, flag, range).map(Duration::from_secs)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
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

    #[test]
    fn errors_name_the_setting() {
        let cli = Cli::parse_from(["x", "--listen", "nope"]);
        let err = cli.args.resolve().unwrap_err().to_string();
        assert!(
            err.contains("ARTIFACTSTORE_LISTEN") && err.contains("--listen"),
            "{err}"
        );
        let cli = Cli::parse_from(["x", "--max-file-size", "lots"]);
        assert!(
            cli.args
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("ARTIFACTSTORE_MAX_FILE_SIZE")
        );
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

//! PostgreSQL: connection pool, embedded migrations, and the managed private cluster.

pub mod cluster;
mod tls;

pub use tls::{Target, target};

use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Builds a connection pool for `url` (TLS as its `sslmode` says, see [`target`]).
pub fn pool(url: &str, max_size: usize) -> Result<Pool> {
    let Target { config, tls } = target(url)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Some(tls) => Manager::from_config(config, tls, manager_config),
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
    };
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|e| Error::Database(format!("building pool: {e}")))
}

/// Opens one unpooled connection, driven by a background task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let Target { config, tls } = target(url)?;
    let client = match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(drive(connection));
            client
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(connection));
            client
        }
    };
    Ok(client)
}

/// Runs a connection until it closes.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "database connection closed");
    }
}

/// Applies every pending migration from `sql/`; returns how many ran.
pub async fn migrate(url: &str) -> Result<usize> {
    let mut client = connect(url).await?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await
        .map_err(|e| Error::Database(format!("migration failed: {e}")))?;
    Ok(report.applied_migrations().len())
}

/// A short fingerprint of the embedded migrations (names and checksums), used to name test
/// template databases.
pub fn migrations_fingerprint() -> String {
    let mut hasher = blake3::Hasher::new();
    for m in embedded::migrations::runner().get_migrations() {
        hasher.update(m.name().as_bytes());
        hasher.update(&m.checksum().to_le_bytes());
    }
    hasher.finalize().to_hex()[..12].to_owned()
}

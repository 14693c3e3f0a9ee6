//! PostgreSQL: connection pool, embedded migrations, and the managed private cluster.

pub mod cluster;

use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Builds a connection pool for `url`.
pub fn pool(url: &str, max_size: usize) -> Result<Pool> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::InvalidInput(format!("database URL is invalid: {e}")))?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|e| Error::Database(format!("building pool: {e}")))
}

/// Opens one unpooled connection, driven by a background task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
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

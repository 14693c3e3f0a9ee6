//! PostgreSQL: connection pool, embedded migrations, and the managed private cluster.

pub mod cluster;
mod tls;

pub use tls::{Target, target};

use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// A transaction on a pooled connection (its prepared statements are cached per connection).
pub type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// How long a caller waits for a pooled connection (and for a new one to be made) before it is
/// told the database is unavailable, unless set otherwise ([`pool_with_timeout`]).
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a connection pool for `url` (TLS as its `sslmode` says, see [`target`]) whose
/// callers wait at most [`DEFAULT_POOL_TIMEOUT`] for a connection.
pub fn pool(url: &str, max_size: usize) -> Result<Pool> {
    pool_with_timeout(url, max_size, DEFAULT_POOL_TIMEOUT)
}

/// Run on every pooled connection once made. No JIT compilation: every statement here reads
/// or writes a few rows by index, and PostgreSQL compiles a statement whose estimated cost
/// passes `jit_above_cost` with inlining and optimisation, tens of milliseconds of CPU on
/// every execution of a statement that runs in microseconds (an estimate inflated by a
/// planner setting, or made on stale statistics, is enough). A statement rather than a
/// startup option, which connection poolers such as PgBouncer refuse.
const SESSION_SETTINGS: &str = "SET jit = off";

/// Builds a connection pool whose callers wait at most `timeout` for a connection, and for a
/// new connection to be made or an idle one checked: a pool that is exhausted (every
/// connection held) or a database that does not answer is then an error the caller can report
/// ([`Error::Database`], a 503 to HTTP clients), never a wait without end.
pub fn pool_with_timeout(url: &str, max_size: usize, timeout: Duration) -> Result<Pool> {
    let Target { config, tls } = target(url)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Some(tls) => Manager::from_config(config, tls, manager_config),
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
    };
    Pool::builder(manager)
        // Bounded like the connecting before it (the pool runs hooks without a timeout of
        // its own): a database that connects and then does not answer is an error.
        .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            Box::pin(async move {
                match tokio::time::timeout(timeout, client.batch_execute(SESSION_SETTINGS)).await {
                    Ok(set) => set.map_err(deadpool_postgres::HookError::Backend),
                    Err(_) => Err(deadpool_postgres::HookError::message(
                        "the database did not answer a new connection's settings in time",
                    )),
                }
            })
        }))
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
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

/// Advisory lock key held while migrations run (replicas starting together take turns).
const MIGRATION_LOCK: i64 = 0x6172_7473_6d69_6772; // "artsmigr"

/// Applies every pending migration from `sql/`; returns how many ran. Processes starting
/// together on one database take turns (a session advisory lock): the first applies what is
/// pending, the others then find nothing to do. Without it two would both create the history
/// table or apply the same migration, and all but one fail.
pub async fn migrate(url: &str) -> Result<usize> {
    let mut client = connect(url).await?;
    let free: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?
        .get(0);
    if !free {
        // Who holds it (PostgreSQL shows a bigint key as its halves, objsubid 1).
        let holder = client
            .query_opt(
                "SELECT format('backend %s from %s', a.pid, coalesce(host(a.client_addr), 'a local socket')) \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                   AND l.objid = ($1::bigint & 4294967295)::oid \
                   AND l.classid = ($1::bigint >> 32)::oid LIMIT 1",
                &[&MIGRATION_LOCK],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0));
        tracing::info!(
            holder = holder.as_deref().unwrap_or("unknown"),
            "another process is applying migrations; waiting for it"
        );
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
    }
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await
        .map_err(|e| Error::Database(format!("migration failed: {e}")));
    // The lock ends with the session anyway; unlocking lets the next process go at once.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    Ok(report?.applied_migrations().len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A database that completes the start-up and then answers nothing: taking a connection
    /// from the pool is an error after the pool's timeout, not a wait without end (the
    /// connection's settings are sent after the start-up, outside the pool's own timeouts).
    #[tokio::test]
    async fn a_database_silent_after_start_up_is_an_error_in_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut length = [0u8; 4];
            socket.read_exact(&mut length).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
            socket.read_exact(&mut startup).await.unwrap();
            // AuthenticationOk, then ReadyForQuery (idle); then silence.
            socket
                .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0])
                .await
                .unwrap();
            socket.write_all(&[b'Z', 0, 0, 0, 5, b'I']).await.unwrap();
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        });
        let url = format!("postgres://nobody@127.0.0.1:{port}/x?sslmode=disable");
        let pool = pool_with_timeout(&url, 1, Duration::from_millis(300)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), pool.get())
            .await
            .expect("the pool gave up on its own");
        let error = Error::from(got.expect_err("no connection from a silent database"));
        assert!(error.to_string().contains("did not answer"), "{error}");
        server.abort();
    }
}

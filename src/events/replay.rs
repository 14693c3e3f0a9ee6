//! Rebuilding the views from the log.

use super::log::{StoredEvent, read_after};
use super::views::{VIEW_TABLES, apply_all};
use crate::error::Result;
use futures::{StreamExt, pin_mut};
use std::time::{Duration, Instant};

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Events applied.
    pub events: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// With `check`: whether the rebuilt views equal the views before (byte for byte).
    pub identical: Option<bool>,
}

/// How long replay waits for the view tables' locks before it lets go of the ones it has and
/// tries again (writers take view rows in no fixed table order, so waiting while holding some
/// could deadlock with one of them).
const LOCK_WAIT: &str = "1s";

/// How many times replay tries to lock the view tables.
const LOCK_ATTEMPTS: u32 = 60;

/// Truncates the views and re-applies every event, in one transaction that first locks the
/// view tables against writes (writers wait; readers keep seeing the old views until COMMIT)
/// and numbers every committed event (so none is left out). With `check`, the views are dumped
/// before and after and the transaction is rolled back: a read-only consistency check.
pub async fn replay(pool: &deadpool_postgres::Pool, check: bool) -> Result<ReplayReport> {
    let started = Instant::now();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_views(&tx).await?;
    super::sequencer::number_committed(&tx).await?;
    let before = if check {
        Some(dump_views(&*tx).await?)
    } else {
        None
    };
    tx.batch_execute(&format!("TRUNCATE {}", view_tables()))
        .await?;
    let mut since = 0;
    let mut count = 0u64;
    loop {
        let batch: Vec<StoredEvent> = read_after(&*tx, since, 2000, None, None).await?;
        let Some(last) = batch.last() else { break };
        since = last.sequence;
        apply_all(&tx, &batch).await?;
        count += batch.len() as u64;
    }
    let identical = match before {
        Some(before) => {
            let same = dump_views(&*tx).await? == before;
            tx.rollback().await?;
            Some(same)
        }
        None => {
            tx.commit().await?;
            None
        }
    };
    Ok(ReplayReport {
        events: count,
        elapsed: started.elapsed(),
        identical,
    })
}

fn view_tables() -> String {
    let tables: Vec<&str> = VIEW_TABLES.iter().map(|(t, _)| *t).collect();
    tables.join(", ")
}

/// Locks every view table in EXCLUSIVE mode in `tx`: no writer is changing a view or can start
/// to, and every writer that changed one has committed or rolled back (writers insert their
/// events after changing the views, so every event of a committed writer is there to be
/// numbered). A try that times out is rolled back to its savepoint, which lets go of the
/// tables it had, and tried again.
async fn lock_views(tx: &deadpool_postgres::Transaction<'_>) -> Result<()> {
    let lock = format!(
        "SAVEPOINT lock_views; SET LOCAL lock_timeout = '{LOCK_WAIT}'; \
         LOCK TABLE {} IN EXCLUSIVE MODE; RELEASE SAVEPOINT lock_views; \
         SET LOCAL lock_timeout = 0",
        view_tables()
    );
    for attempt in 1..=LOCK_ATTEMPTS {
        match tx.batch_execute(&lock).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::info!(attempt, "replay waiting for writers to let go of the views");
                tx.batch_execute("ROLLBACK TO SAVEPOINT lock_views").await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(crate::error::Error::Database(
        "replay could not lock the views: writers held them throughout".into(),
    ))
}

/// Every view table's rows in a fixed order, as PostgreSQL's COPY text: equal bytes mean
/// equal views.
pub async fn dump_views(client: &impl tokio_postgres::GenericClient) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (table, order) in VIEW_TABLES {
        out.extend_from_slice(format!("-- {table}\n").as_bytes());
        // A tenant's usage is the sum of its slots; which slot holds what depends on the
        // connections that wrote it (`sql/V13__usage_slot_per_connection.sql`).
        let query = if *table == "tenant_usage" {
            "SELECT tenant, sum(logical_bytes), sum(packages) FROM tenant_usage GROUP BY tenant \
             HAVING sum(logical_bytes) <> 0 OR sum(packages) <> 0 ORDER BY tenant"
                .to_owned()
        } else {
            format!("SELECT * FROM {table} ORDER BY {order}")
        };
        let stream = client
            .client()
            .copy_out(&format!("COPY ({query}) TO STDOUT"))
            .await?;
        pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
    }
    Ok(out)
}

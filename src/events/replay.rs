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

/// Truncates the views and re-applies every event, in one transaction that holds the
/// sequence lock (writers wait; readers keep seeing the old views until COMMIT).
/// With `check`, the views are dumped before and after and the transaction is rolled back:
/// a read-only consistency check.
pub async fn replay(pool: &deadpool_postgres::Pool, check: bool) -> Result<ReplayReport> {
    let started = Instant::now();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT last_sequence FROM event_counter FOR UPDATE", &[])
        .await?;
    let before = if check {
        Some(dump_views(&*tx).await?)
    } else {
        None
    };
    let tables: Vec<&str> = VIEW_TABLES.iter().map(|(t, _)| *t).collect();
    tx.batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
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

/// Every view table's rows in a fixed order, as PostgreSQL's COPY text: equal bytes mean
/// equal views.
pub async fn dump_views(client: &impl tokio_postgres::GenericClient) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (table, order) in VIEW_TABLES {
        out.extend_from_slice(format!("-- {table}\n").as_bytes());
        let stream = client
            .client()
            .copy_out(&format!(
                "COPY (SELECT * FROM {table} ORDER BY {order}) TO STDOUT"
            ))
            .await?;
        pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
    }
    Ok(out)
}

//! Rebuilding the views from the log.

use super::log::{MAINTENANCE_PAGE_BYTES, read_page};
use super::views::{VIEW_TABLES, apply_all};
use crate::error::{Error, Result};
use futures::{StreamExt, pin_mut};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

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
/// view tables (and the tables their foreign keys name) against readers and writers, who wait
/// until COMMIT, and numbers every committed event (so none is left out). The views' foreign
/// keys are dropped for the load and added back before COMMIT, which checks every row in one
/// pass where keeping them checks each inserted row on its own (the way `pg_restore` loads);
/// a role that does not own the view tables keeps them and checks row by row. With `check`,
/// the views are dumped before and after and the transaction is rolled back: a read-only
/// consistency check.
pub async fn replay(pool: &deadpool_postgres::Pool, check: bool) -> Result<ReplayReport> {
    let started = Instant::now();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let may_set_aside = may_set_keys_aside(&tx).await?;
    lock_views(&tx, may_set_aside).await?;
    super::sequencer::number_committed(&tx).await?;
    let before = if check {
        Some(dump_views(&*tx).await?)
    } else {
        None
    };
    tx.batch_execute(&format!("TRUNCATE {}", view_tables()))
        .await?;
    let keys = if may_set_aside {
        ForeignKey::set_aside(&tx).await?
    } else {
        tracing::info!(
            "replay checks the views' foreign keys row by row: this role does not own the view \
             tables (or may not reference the tables their keys name)"
        );
        Vec::new()
    };
    let mut since = 0;
    let mut count = 0u64;
    loop {
        // By count, and by bytes: a finalize event carries its package's manifest.
        let (batch, _) = read_page(
            &*tx,
            since,
            i64::MAX,
            2000,
            MAINTENANCE_PAGE_BYTES,
            None,
            None,
        )
        .await?;
        let Some(last) = batch.last() else { break };
        since = last.sequence;
        apply_all(&tx, &batch).await?;
        count += batch.len() as u64;
    }
    ForeignKey::restore(&tx, &keys).await?;
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

fn view_table_names() -> Vec<&'static str> {
    VIEW_TABLES.iter().map(|(t, _)| *t).collect()
}

fn view_tables() -> String {
    view_table_names().join(", ")
}

/// A view table's foreign key that only checks (no cascade, not deferrable): dropping it
/// for the load and adding it back before COMMIT checks the same rows.
struct ForeignKey {
    /// The table, as `regclass` prints it.
    table: String,
    /// The constraint's name, quoted where it needs to be.
    name: String,
    /// `pg_get_constraintdef`: `FOREIGN KEY (...) REFERENCES ...`.
    definition: String,
}

impl ForeignKey {
    /// Drops the view tables' checking foreign keys and returns them; none where this role
    /// may not (it does not own the tables): the load then checks each row as it goes.
    async fn set_aside(tx: &deadpool_postgres::Transaction<'_>) -> Result<Vec<ForeignKey>> {
        let keys: Vec<ForeignKey> = tx
            .query(
                "SELECT conrelid::regclass::text, quote_ident(conname), \
                        pg_get_constraintdef(oid) \
                 FROM pg_constraint \
                 WHERE contype = 'f' AND conrelid = ANY($1::text[]::regclass[]) \
                   AND confdeltype = 'a' AND confupdtype = 'a' AND NOT condeferrable \
                 ORDER BY 1, 2",
                &[&view_table_names()],
            )
            .await?
            .iter()
            .map(|row| ForeignKey {
                table: row.get(0),
                name: row.get(1),
                definition: row.get(2),
            })
            .collect();
        if keys.is_empty() {
            return Ok(keys);
        }
        let drop: String = keys
            .iter()
            .map(|k| format!("ALTER TABLE {} DROP CONSTRAINT {}; ", k.table, k.name))
            .collect();
        match tx
            .batch_execute(&format!(
                "SAVEPOINT set_aside; {drop}RELEASE SAVEPOINT set_aside"
            ))
            .await
        {
            Ok(()) => Ok(keys),
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                tracing::info!(
                    "replay checks the views' foreign keys row by row: this role does not own \
                     the view tables ({e})"
                );
                tx.batch_execute("ROLLBACK TO SAVEPOINT set_aside").await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Adds `keys` back, each checking every row of its table.
    async fn restore(tx: &deadpool_postgres::Transaction<'_>, keys: &[ForeignKey]) -> Result<()> {
        for key in keys {
            tx.batch_execute(&format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {}",
                key.table, key.name, key.definition
            ))
            .await
            .map_err(|e| {
                if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                    Error::Integrity(format!(
                        "the log's views break {} on {}: {}",
                        key.name,
                        key.table,
                        e.as_db_error()
                            .map_or_else(|| e.to_string(), |d| d.to_string())
                    ))
                } else {
                    e.into()
                }
            })?;
        }
        Ok(())
    }
}

/// Whether this role may drop the views' foreign keys and add them back: it owns every view
/// table and may reference every table their keys name.
async fn may_set_keys_aside(tx: &deadpool_postgres::Transaction<'_>) -> Result<bool> {
    let row = tx
        .query_one(
            "SELECT bool_and(pg_has_role(current_user, c.relowner, 'USAGE')) \
                    AND coalesce((SELECT bool_and(has_table_privilege(k.confrelid, 'REFERENCES')) \
                                  FROM pg_constraint k \
                                  WHERE k.contype = 'f' \
                                    AND k.conrelid = ANY($1::text[]::regclass[])), true) \
             FROM pg_class c WHERE c.oid = ANY($1::text[]::regclass[])",
            &[&view_table_names()],
        )
        .await?;
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

/// Locks every view table, and (when it will drop their keys) every table the views' foreign
/// keys name, in ACCESS EXCLUSIVE
/// mode in `tx` (what TRUNCATE and dropping the keys take; taken here, all at once, so that
/// replay never waits for a lock while holding others): no writer is changing a view or can
/// start to, and every writer that changed one has committed or rolled back (writers insert
/// their events after changing the views, so every event of a committed writer is there to be
/// numbered). A try that times out is rolled back to its savepoint, which lets go of the
/// tables it had, and tried again.
async fn lock_views(tx: &deadpool_postgres::Transaction<'_>, with_named: bool) -> Result<()> {
    let named: Vec<String> = if !with_named {
        Vec::new()
    } else {
        tx.query(
            "SELECT DISTINCT confrelid::regclass::text FROM pg_constraint \
             WHERE contype = 'f' AND conrelid = ANY($1::text[]::regclass[]) \
               AND NOT confrelid = ANY($1::text[]::regclass[]) ORDER BY 1",
            &[&view_table_names()],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect()
    };
    let mut tables = view_tables();
    for table in named {
        tables.push_str(", ");
        tables.push_str(&table);
    }
    let lock = format!(
        "SAVEPOINT lock_views; SET LOCAL lock_timeout = '{LOCK_WAIT}'; \
         LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE; RELEASE SAVEPOINT lock_views; \
         SET LOCAL lock_timeout = 0"
    );
    for attempt in 1..=LOCK_ATTEMPTS {
        match tx.batch_execute(&lock).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::info!(attempt, "replay waiting for writers to let go of the views");
                tx.batch_execute("ROLLBACK TO SAVEPOINT lock_views").await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Database(
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

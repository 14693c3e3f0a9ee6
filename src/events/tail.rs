//! Reading pages of the log for long-polls, with identical reads coalesced.
//!
//! When one commit wakes thousands of waiters, most of them ask the same question (same tenant,
//! same `since`, same filter). Each distinct question is sent to PostgreSQL once; everyone who
//! asks it while that read is in flight shares its answer. That stays correct because a shared
//! answer is only ever *older* than the asker, never newer: an asker that gets a page without the
//! event that woke it sees, through the bus, that more is committed than the page covers, and
//! reads again.

use super::log::{StoredEvent, latest_sequence, read_page};
use crate::domain::TenantId;
use crate::error::{Error, Result};
use deadpool_postgres::Pool;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A page and how far it looked: every event up to `scanned_to` that matches is in `events`
/// (unless the page is full).
#[derive(Debug)]
pub struct TailPage {
    /// Matching events after `since`, in order, at most `limit`.
    pub events: Vec<StoredEvent>,
    /// Every matching event up to here is in the page: the latest committed sequence when
    /// the page was read (at least `since`), or the page's last event when its byte bound
    /// ended it early.
    pub scanned_to: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Question {
    tenant: TenantId,
    since: i64,
    limit: i64,
    type_prefix: Option<String>,
    /// The numbering pass the read must start after (0: any): askers after different passes
    /// never share a read, so none gets a page read before its own pass.
    fresh_after: u64,
}

type Answer = Shared<BoxFuture<'static, std::result::Result<Arc<TailPage>, Arc<Error>>>>;

/// Coalescing reader of log pages for one process.
#[derive(Clone)]
pub struct TailReader {
    pool: Pool,
    in_flight: Arc<Mutex<HashMap<Question, Answer>>>,
    reads: Arc<AtomicU64>,
    max_bytes: i64,
}

/// The payload bytes a page holds by default (past them it ends early; see
/// [`TailReader::with_page_bytes`]).
pub const PAGE_BYTES: u64 = 16 << 20;

impl TailReader {
    /// A reader over `pool`.
    pub fn new(pool: Pool) -> Self {
        Self::with_page_bytes(pool, PAGE_BYTES)
    }

    /// A reader whose pages end after the event that takes their payloads past `max_bytes`
    /// (a finalize event carries its manifest: a page of large packages' would otherwise be
    /// held whole in memory, per page and per waiter).
    pub fn with_page_bytes(pool: Pool, max_bytes: u64) -> Self {
        TailReader {
            pool,
            in_flight: Arc::default(),
            reads: Arc::default(),
            max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        }
    }

    /// Reads sent to PostgreSQL so far (each answers every asker of one question).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The tenant's events after `since` (optionally only types starting with `type_prefix`),
    /// at most `limit`, and the latest committed sequence the page covers. `fresh_after`: the
    /// pass (from [`Sequencer::numbered_within`](super::Sequencer::numbered_within)) the read
    /// must begin after, 0 for any.
    ///
    /// `hold` is kept until the read this asks for ends, if it starts one, even when the asker
    /// goes away first: the asker's place among the long-polls (see
    /// [`EventBus::waiting_request`](super::EventBus::waiting_request)), so that reads left
    /// behind by clients that hang up count against the limits on long-polls, in all and per
    /// tenant, until they end.
    pub async fn page(
        &self,
        tenant: &TenantId,
        since: i64,
        limit: i64,
        type_prefix: Option<&str>,
        fresh_after: u64,
        hold: impl Send + Sync + 'static,
    ) -> Result<Arc<TailPage>> {
        let question = Question {
            tenant: tenant.clone(),
            since,
            limit,
            type_prefix: type_prefix.map(str::to_owned),
            fresh_after,
        };
        let answer = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight
                .entry(question.clone())
                .or_insert_with(|| self.ask(question.clone(), hold))
                .clone()
        };
        answer.await.map_err(|e| match Arc::try_unwrap(e) {
            Ok(e) => e,
            // Shared with other askers: reads only fail in the database.
            Err(shared) => match &*shared {
                Error::Database(message) => Error::Database(message.clone()),
                other => Error::Database(other.to_string()),
            },
        })
    }

    fn ask(&self, question: Question, hold: impl Send + Sync + 'static) -> Answer {
        let pool = self.pool.clone();
        let in_flight = self.in_flight.clone();
        let max_bytes = self.max_bytes;
        self.reads.fetch_add(1, Ordering::Relaxed);
        // The read is a task of its own, so it always runs to its end, gives its connection
        // back and leaves the table, whichever of its askers hang up. (A shared future that
        // every asker dropped would stay in the table unpolled, holding its connection, or its
        // place in the pool's queue, for good.)
        let task = tokio::spawn(async move {
            let _hold = hold;
            let result = read(&pool, &question, max_bytes).await;
            // Later askers start a fresh read: they may be waiting for newer events.
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&question);
            result.map(Arc::new).map_err(Arc::new)
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::new(Error::Database(format!("reading events: {e}")))))
        }
        .boxed()
        .shared()
    }
}

async fn read(pool: &Pool, q: &Question, max_bytes: i64) -> Result<TailPage> {
    let client = pool.get().await?;
    // Everything up to the latest committed sequence is visible (commit order), so a page that
    // is not full has seen every matching event up to it.
    let upto = latest_sequence(&**client).await?.max(q.since);
    let (events, cut) = read_page(
        &**client,
        q.since,
        upto,
        q.limit,
        max_bytes,
        Some(&q.tenant),
        q.type_prefix.as_deref(),
    )
    .await?;
    let scanned_to = match events.last() {
        Some(last) if cut => last.sequence,
        _ => upto,
    };
    Ok(TailPage { events, scanned_to })
}

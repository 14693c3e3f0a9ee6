//! The sequencer: gives committed events their gapless, ordered sequence numbers.
//!
//! Writers commit their events unnumbered, holding no lock that other writers wait for beyond
//! the rows they change (see `sql/V10__event_sequencer.sql`). A numbering pass is one short
//! transaction that takes `event_counter`'s row lock, numbers every committed unnumbered event
//! in ticket order after the last number given, and commits. Passes are serialized by that
//! lock and a reader only sees numbered events, so what a reader sees is always the whole
//! prefix `1..=last`: no gap, and never a number before a smaller one. A writer that rolls back
//! never had a number; one that dies after COMMIT leaves its events for the next pass.
//!
//! Each process has one [`Sequencer`] with a connection of its own (not from the pool: readers
//! waiting for a pass may hold pooled connections). After COMMIT a writer asks it for a pass
//! ([`Sequencer::request`]) and goes on; a reader of the log that must see everything committed
//! before it began (`GET /events`) waits until a pass that began after that has ended
//! ([`Sequencer::numbered`]). Requests coalesce: one pass numbers every event committed before
//! it began, whichever writer or process committed it.
//! Once started, the sequencer also runs a pass every [`TICK`], which numbers the events of a
//! process that died between its COMMIT and its pass.

use super::numbering::{ANYTHING_TO_DO, End, Statements};
use crate::error::Result;
use deadpool_postgres::Pool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often a started sequencer runs a pass unasked.
pub const TICK: Duration = Duration::from_secs(1);

/// How long [`Sequencer::numbered`] (a process settling before it exits) waits before it
/// gives up (the events are committed; a later pass of any process numbers them).
const WAIT: Duration = Duration::from_secs(10);

/// Longest a pass may take before its connection is dropped (and its transaction, with the
/// counter's lock, rolled back); the connection's own timeouts below make PostgreSQL end it
/// too if this process stops answering in the middle of a pass (paused, partitioned).
const PASS_TIMEOUT: Duration = Duration::from_secs(30);

/// Set on the sequencer's connection: no pass holds the counter's lock for long, whatever
/// happens to this process or its network. Its statements find each row by index whatever
/// the log's size (no sequential scans, no hash or merge joins: every statement here touches
/// a few rows of the log, by index): they are prepared once, and a plan made while the log
/// was small (a new store, statistics not yet gathered) scanned the whole log in every pass
/// until the next ANALYZE. No JIT compilation either: refusing sequential scans prices the
/// counter's one-row table (no index to read it by) at `disable_cost`, far above
/// `jit_above_cost`, and each statement on it was compiled with inlining and optimisation
/// (~60 ms of CPU per statement, three per pass) to read one row.
const SESSION_LIMITS: &str = "SET statement_timeout = '20s'; \
    SET idle_in_transaction_session_timeout = '5s'; \
    SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off; \
    SET jit = off; SET application_name = 'artifactstore sequencer'";

/// Passes of this code take turns under this transaction advisory lock before they touch the
/// counter: a pass that waited for another looks again (a fresh snapshot) and, when that pass
/// numbered everything, ends without a row lock, a write or a WAL flush. Several servers' passes
/// otherwise each locked and rewrote the counter row and waited for its commit, only to find
/// nothing left to number.
const TAKE_TURN: &str = "SELECT pg_advisory_xact_lock($1)";

/// The key of [`TAKE_TURN`]'s lock.
const TURN_KEY: i64 = 0x6172_7473_7365_7121; // "artsseq!"

/// Numbers every committed unnumbered event, inside the caller's transaction: takes the
/// counter's row lock (held until that transaction ends; waits while another pass holds it),
/// then numbers and chains. Returns how many events it numbered.
pub async fn number_committed(tx: &deadpool_postgres::Transaction<'_>) -> Result<u64> {
    let statements = Statements::prepare(&**tx).await?;
    let (numbered, _) = super::numbering::number(&**tx, &statements, End::Caller).await?;
    Ok(numbered)
}

/// One process's sequencer (cheap to clone; the background task ends soon after the last
/// clone is dropped).
#[derive(Clone)]
pub struct Sequencer {
    shared: Arc<Shared>,
    /// Only its strong count matters: the task stops when no handle is left.
    alive: Arc<()>,
}

struct Shared {
    pool: Pool,
    /// Passes asked for so far; a pass started after request `n` was made answers it.
    requested: AtomicU64,
    wake: Notify,
    /// The highest request answered by a finished pass.
    answered: watch::Sender<u64>,
    started: OnceLock<()>,
}

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("requested", &self.shared.requested.load(Ordering::Relaxed))
            .field("answered", &*self.shared.answered.borrow())
            .finish()
    }
}

impl Sequencer {
    /// A sequencer whose connection is made like `pool`'s (it does not start until
    /// [`start`](Self::start) or the first [`numbered`](Self::numbered)).
    pub fn new(pool: Pool) -> Self {
        Sequencer {
            shared: Arc::new(Shared {
                pool,
                requested: AtomicU64::new(0),
                wake: Notify::new(),
                answered: watch::channel(0).0,
                started: OnceLock::new(),
            }),
            alive: Arc::new(()),
        }
    }

    /// Starts the background task (once; later calls do nothing): from then on a pass also
    /// runs every [`TICK`]. A server or worker starts it, so that events committed by a
    /// process that died before numbering them are numbered within a tick.
    pub fn start(&self) {
        self.shared.started.get_or_init(|| {
            let shared = self.shared.clone();
            let alive = Arc::downgrade(&self.alive);
            tokio::spawn(run(shared, alive));
        });
    }

    /// Asks for a pass, without waiting for it: a writer's call after its COMMIT, so that its
    /// events are numbered (and their readers woken) at once.
    pub fn request(&self) {
        self.start();
        self.shared.requested.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Waits until the passes this process asked for have run: before a process exits, so
    /// that its events need no other process's pass.
    pub async fn settle(&self) {
        if self.shared.requested.load(Ordering::SeqCst) > 0 {
            self.numbered().await;
        }
    }

    /// Waits until every event committed before this call is numbered (at most [`WAIT`]; after
    /// that the events are numbered by a later pass, and a warning is logged).
    pub async fn numbered(&self) {
        if self.numbered_within(WAIT).await.is_none() {
            tracing::warn!(
                waited = ?WAIT,
                "committed events not numbered yet; a later pass will number them"
            );
        }
    }

    /// Waits, at most `bound`, until every event committed before this call is numbered.
    /// `Some(pass)` when they are: the count of passes asked for that had been answered when
    /// this returned; a read started after that is fresh enough (see
    /// [`TailReader::page`](super::TailReader::page)).
    pub async fn numbered_within(&self, bound: Duration) -> Option<u64> {
        self.start();
        let request = self.shared.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut answered = self.shared.answered.subscribe();
        self.shared.wake.notify_one();
        match tokio::time::timeout(bound, answered.wait_for(|a| *a >= request)).await {
            Ok(Ok(pass)) => Some(*pass),
            _ => None,
        }
    }
}

async fn run(shared: Arc<Shared>, alive: Weak<()>) {
    let mut connection: Option<(deadpool_postgres::ClientWrapper, Statements)> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        if alive.strong_count() == 0 {
            return;
        }
        // Every request made before this load was made after its writer's COMMIT; the pass
        // below takes its snapshot later, so it sees (and numbers) those events.
        let target = shared.requested.load(Ordering::SeqCst);
        let passed = tokio::time::timeout(PASS_TIMEOUT, pass(&shared.pool, &mut connection))
            .await
            .unwrap_or_else(|_| {
                Err(crate::error::Error::Database(format!(
                    "numbering pass took over {PASS_TIMEOUT:?}"
                )))
            });
        match passed {
            Ok(numbered) => {
                crate::metrics::sequencer_pass(if numbered > 0 { "numbered" } else { "idle" });
                backoff = Duration::from_millis(50);
                shared.answered.send_modify(|a| *a = (*a).max(target));
            }
            Err(e) => {
                crate::metrics::sequencer_pass("failed");
                tracing::warn!(error = %e, retry_in = ?backoff, "event sequencer pass failed");
                connection = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                shared.wake.notify_one();
            }
        }
    }
}

/// A connection of the sequencer's own, made like `pool`'s, with [`SESSION_LIMITS`].
async fn connect(pool: &Pool) -> Result<deadpool_postgres::ClientWrapper> {
    use deadpool::managed::Manager as _;
    let made = pool
        .manager()
        .create()
        .await
        .map_err(|e| crate::error::Error::Database(format!("sequencer connection: {e}")))?;
    made.batch_execute(SESSION_LIMITS).await?;
    Ok(made)
}

/// What PostgreSQL plans for each statement of a numbering pass on a connection set up as the
/// sequencer's (generic plans, which its prepared statements use after their first runs): one
/// `EXPLAIN` text per statement, for checking that a pass reads a few rows by index and
/// compiles nothing, whatever the log's size and statistics.
pub async fn pass_plans(pool: &Pool) -> Result<Vec<String>> {
    let client = connect(pool).await?;
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await?;
    let mut texts = super::numbering::pass_statements();
    texts.push(TAKE_TURN.to_owned());
    let mut plans = Vec::with_capacity(texts.len());
    for (i, sql) in texts.iter().enumerate() {
        let params = client.prepare(sql).await?.params().len();
        client
            .batch_execute(&format!("PREPARE pass_plan_{i} AS {sql}"))
            .await?;
        let args = match params {
            0 => String::new(),
            n => format!("({})", vec!["NULL"; n].join(", ")),
        };
        let mut plan = String::new();
        for message in client
            .simple_query(&format!("EXPLAIN EXECUTE pass_plan_{i}{args}"))
            .await?
        {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                plan.push_str(row.get(0).unwrap_or_default());
                plan.push('\n');
            }
        }
        plans.push(format!("{sql}\n{plan}"));
    }
    Ok(plans)
}

/// One numbering pass on the sequencer's own connection (made first if there is none); no
/// row lock and no write when nothing waits for a number.
async fn pass(
    pool: &Pool,
    connection: &mut Option<(deadpool_postgres::ClientWrapper, Statements)>,
) -> Result<u64> {
    if connection.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        let made = connect(pool).await?;
        let statements = Statements::prepare(&*made).await?;
        *connection = Some((made, statements));
    }
    let Some((client, statements)) = connection.as_mut() else {
        return Err(crate::error::Error::Database(
            "no sequencer connection".into(),
        ));
    };
    let (any, turn) = futures::try_join!(
        client.prepare_cached(ANYTHING_TO_DO),
        client.prepare_cached(TAKE_TURN)
    )?;
    // One round trip: BEGIN, the turn, then the look (a statement of its own, after the turn
    // was had). This connection is the sequencer's alone, so its transaction is spelled out;
    // on any error the connection is dropped, and the transaction with it.
    let (_, _, any) = futures::try_join!(
        client.batch_execute("BEGIN"),
        client.execute(&turn, &[&TURN_KEY]),
        client.query_one(&any, &[])
    )?;
    let (numbered, committed) = if any.get::<_, bool>(0) {
        super::numbering::number(&**client, statements, End::CommitWithLastWrite).await?
    } else {
        (0, false)
    };
    // Nothing written when nothing was numbered: no transaction id, no WAL flush.
    if !committed {
        client.batch_execute("COMMIT").await?;
    }
    Ok(numbered)
}

//! The worker: background jobs that keep storage honest. Any number of worker processes may
//! run; a job that must not run twice at once is guarded by a PostgreSQL advisory lock.
//!
//! Jobs: expiring due packages (claimed with `FOR UPDATE SKIP LOCKED`, so any number of
//! workers share the work and each package expires exactly once), expiring abandoned upload
//! sessions, sweeping backends' staging areas of abandoned writes, and scheduled (sampled)
//! verification of stored copies. The loop sleeps until the earliest due time (the next
//! package expiry included) or a committed event (a NOTIFY through the [`EventBus`]: a new
//! expiry, a released hold), never polling; [`Worker::run_once`] runs every job once (cron).

use crate::error::Result;
use crate::events::EventBus;
use crate::registry::{Collectable, Collected, Expiry, Registry, VerifyOutcome, VerifyScope};
use std::time::{Duration, Instant, SystemTime};

/// Advisory lock key of the verification job (one verifier at a time across workers).
const VERIFY_LOCK: i64 = 0x6172_7473_7665_7269; // "artsveri"

/// What to run and how often.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How often upload sessions and staging areas are swept.
    pub sweep_every: Duration,
    /// Staged writes older than this are abandoned.
    pub staging_grace: Duration,
    /// How often a verification run starts; `None`: never.
    pub verify_every: Option<Duration>,
    /// Fraction of copies each verification run checks.
    pub verify_sample: f64,
    /// How long an open package may stay unfinalized before it expires.
    pub open_grace: Duration,
    /// Packages expired (and blobs collected) per transaction.
    pub expire_batch: i64,
    /// How long a blob stays after the last file referencing it went.
    pub gc_grace: Duration,
    /// How often backends are listed for orphan bytes (no row; a crash between write and
    /// commit).
    pub orphan_sweep_every: Duration,
    /// How long retrieval records are kept.
    pub retrieval_records_kept: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Packages expired.
    pub expired: Vec<Expiry>,
    /// Blobs and orphan bytes collected.
    pub collected: Collected,
    /// Upload sessions expired.
    pub uploads_expired: u64,
    /// Abandoned staged writes removed.
    pub staging_removed: u64,
    /// Retrieval records deleted for their age.
    pub retrievals_pruned: u64,
    /// Verification results, when a run happened in this pass.
    pub verified: Option<VerifyOutcome>,
}

/// The worker over a registry.
pub struct Worker {
    registry: Registry,
    options: WorkerOptions,
    next_sweep: Instant,
    next_verify: Option<Instant>,
    next_expiry: Option<Instant>,
    next_collection: Option<Instant>,
    next_orphan_sweep: Instant,
}

impl Worker {
    /// A worker whose jobs are all due now.
    pub fn new(registry: Registry, options: WorkerOptions) -> Self {
        let now = Instant::now();
        Worker {
            next_verify: options.verify_every.map(|_| now),
            registry,
            options,
            next_sweep: now,
            next_expiry: Some(now),
            next_collection: Some(now),
            next_orphan_sweep: now,
        }
    }

    fn gc_grace_seconds(&self) -> i64 {
        self.options.gc_grace.as_secs().min(i64::MAX as u64) as i64
    }

    /// What collection would do now, changing nothing.
    pub async fn dry_run_collection(&self) -> Result<Vec<Collectable>> {
        self.registry
            .collectable_blobs(self.gc_grace_seconds(), 100_000)
            .await
    }

    /// Collects every blob whose grace ended, batch by batch, then notes when the next one's
    /// does.
    async fn collect(&mut self) -> Result<Collected> {
        let grace = self.gc_grace_seconds();
        let mut total = Collected::default();
        loop {
            let batch = self
                .registry
                .collect_garbage(grace, self.options.expire_batch)
                .await?;
            // Another worker collecting at once holds some of the candidates: go on while
            // this one still finds a full batch and takes some of it (the other goes on too).
            let more = batch.full && batch.blobs > 0;
            total.blobs += batch.blobs;
            total.bytes += batch.bytes;
            if !more {
                break;
            }
        }
        self.next_collection = self.registry.next_collection(grace).await?.map(instant_of);
        Ok(total)
    }

    fn open_grace_seconds(&self) -> i64 {
        self.options.open_grace.as_secs().min(i64::MAX as u64) as i64
    }

    /// What expiry would do now, changing nothing.
    pub async fn dry_run(&self) -> Result<Vec<Expiry>> {
        self.registry
            .due_packages(self.open_grace_seconds(), 100_000)
            .await
    }

    /// Expires every due package, batch by batch, then notes when the next one falls due.
    async fn expire(&mut self) -> Result<Vec<Expiry>> {
        let grace = self.open_grace_seconds();
        let mut expired = Vec::new();
        loop {
            let batch = self
                .registry
                .expire_due(grace, self.options.expire_batch)
                .await?;
            let full = batch.len() as i64 == self.options.expire_batch;
            expired.extend(batch);
            if !full {
                break;
            }
        }
        self.next_expiry = self.registry.next_expiry(grace).await?.map(instant_of);
        Ok(expired)
    }

    /// Runs every job once, due or not.
    pub async fn run_once(&mut self) -> Result<PassReport> {
        self.next_sweep = Instant::now();
        self.next_expiry = Some(Instant::now());
        self.next_collection = Some(Instant::now());
        self.next_orphan_sweep = Instant::now();
        if self.options.verify_every.is_some() {
            self.next_verify = Some(Instant::now());
        }
        self.run_due().await
    }

    /// Runs the jobs that are due, and schedules their next runs. Each job's work is counted
    /// ([`WORKER_JOBS`](crate::metrics::WORKER_JOBS)): items done, or one failure.
    async fn run_due(&mut self) -> Result<PassReport> {
        let result = self.run_due_jobs().await;
        crate::metrics::worker_pass(result.is_ok());
        result
    }

    async fn run_due_jobs(&mut self) -> Result<PassReport> {
        let mut report = PassReport::default();
        let now = Instant::now();
        if self.next_expiry.is_some_and(|due| now >= due) {
            report.expired = tally("expiry", self.expire().await, |e| e.len() as u64)?;
        }
        if self.next_collection.is_some_and(|due| now >= due) {
            report.collected = tally("collection", self.collect().await, |c| c.blobs)?;
        }
        if now >= self.next_orphan_sweep {
            self.next_orphan_sweep = now + self.options.orphan_sweep_every;
            report.collected.orphans =
                tally("orphan_sweep", self.registry.collect_orphans().await, |n| {
                    *n
                })?;
        }
        if now >= self.next_sweep {
            self.next_sweep = now + self.options.sweep_every;
            report.uploads_expired =
                tally("upload_sweep", self.registry.expire_uploads().await, |n| *n)?;
            report.retrievals_pruned =
                tally("retrieval_prune", self.prune_retrievals().await, |n| *n)?;
            let cutoff = SystemTime::now() - self.options.staging_grace;
            for backend in self.registry.backends().all() {
                report.staging_removed +=
                    tally("staging_sweep", backend.sweep_staging(cutoff).await, |n| {
                        *n as u64
                    })? as u64;
            }
        }
        if let (Some(due), Some(every)) = (self.next_verify, self.options.verify_every)
            && now >= due
        {
            self.next_verify = Some(now + every);
            report.verified = self.verify().await.inspect_err(|_| {
                crate::metrics::worker_jobs("verification", "failed", 1);
            })?;
            if let Some(v) = &report.verified {
                crate::metrics::worker_jobs("verification", "ok", v.ok);
                crate::metrics::worker_jobs("verification", "damaged", v.failed);
                crate::metrics::worker_jobs("verification", "missing", v.missing);
                crate::metrics::worker_jobs("verification", "unreadable", v.errors);
            }
        }
        Ok(report)
    }

    /// Deletes the retrieval records older than they are kept, in batches.
    async fn prune_retrievals(&self) -> Result<u64> {
        const BATCH: i64 = 10_000;
        let kept = i64::try_from(self.options.retrieval_records_kept.as_secs()).unwrap_or(i64::MAX);
        let Some(before) = self.registry.now().plus_seconds(-kept) else {
            return Ok(0);
        };
        let mut pruned = 0;
        loop {
            let n = self.registry.prune_retrievals(before, BATCH).await?;
            pruned += n;
            if n < BATCH as u64 {
                return Ok(pruned);
            }
        }
    }

    /// One sampled verification run, unless another worker is running one.
    async fn verify(&self) -> Result<Option<VerifyOutcome>> {
        let lock = self.registry.pool().get().await?;
        let locked: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&VERIFY_LOCK])
            .await?
            .get(0);
        if !locked {
            tracing::info!("another worker is verifying; skipping this run");
            return Ok(None);
        }
        let scope = VerifyScope {
            backend: None,
            sample: self.options.verify_sample,
        };
        let result = async {
            let mut outcome = VerifyOutcome::default();
            let mut after = None;
            loop {
                let page = self
                    .registry
                    .locations_to_verify(&scope, after.as_ref(), 256)
                    .await?;
                let Some(last) = page.last().cloned() else {
                    return Ok(outcome);
                };
                outcome.add(&self.registry.verify_locations(&page, 4).await?);
                after = Some(last);
            }
        }
        .await;
        let _ = lock
            .query_one("SELECT pg_advisory_unlock($1)", &[&VERIFY_LOCK])
            .await;
        result.map(Some)
    }

    /// Runs until `shutdown` completes, sleeping until the next due job or a committed event
    /// (which may bring an earlier expiry). A failing pass is logged and retried a little
    /// later; it never stops the worker.
    pub async fn run(&mut self, bus: &EventBus, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut seen = bus.latest();
        loop {
            match self.run_due().await {
                Ok(report) => log(&report),
                Err(e) => {
                    tracing::warn!(error = %e, "worker pass failed; will retry");
                    self.next_expiry = Some(Instant::now() + Duration::from_secs(5));
                    self.next_collection = Some(Instant::now() + Duration::from_secs(5));
                }
            }
            let next = [
                Some(self.next_sweep),
                Some(self.next_orphan_sweep),
                self.next_verify,
                self.next_expiry,
                self.next_collection,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_sweep);
            let timeout = next.saturating_duration_since(Instant::now());
            tokio::select! {
                woken = bus.wait_beyond(seen, timeout) => {
                    if woken {
                        // Events come in bursts: take a whole burst as one wake-up.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        seen = bus.latest();
                        // Something changed: the next expiry or collection may now be earlier.
                        self.next_expiry = Some(Instant::now());
                        self.next_collection = Some(Instant::now());
                    }
                }
                _ = &mut shutdown => return,
            }
        }
    }
}

/// Counts a job's outcome: `done` items of its result, or one failure.
fn tally<T>(job: &'static str, result: Result<T>, done: impl Fn(&T) -> u64) -> Result<T> {
    match &result {
        Ok(value) => crate::metrics::worker_jobs(job, "done", done(value)),
        Err(_) => crate::metrics::worker_jobs(job, "failed", 1),
    }
    result
}

/// Logs what a pass did (quietly when it did nothing).
pub fn log(report: &PassReport) {
    if !report.expired.is_empty() {
        tracing::info!(packages = report.expired.len(), "expired due packages");
    }
    let c = &report.collected;
    if c.blobs > 0 || c.orphans > 0 {
        tracing::info!(
            blobs = c.blobs,
            bytes = c.bytes,
            orphans = c.orphans,
            "collected garbage"
        );
    }
    if report.uploads_expired > 0 || report.staging_removed > 0 {
        tracing::info!(
            uploads_expired = report.uploads_expired,
            staging_removed = report.staging_removed,
            "swept abandoned uploads and staged writes"
        );
    }
    if let Some(v) = &report.verified {
        let bad = v.failed + v.missing;
        if bad > 0 {
            tracing::error!(
                ok = v.ok,
                failed = v.failed,
                missing = v.missing,
                unreadable = v.errors,
                "verification found damaged copies"
            );
        } else {
            tracing::info!(
                ok = v.ok,
                unreadable = v.errors,
                bytes = v.bytes,
                "verification run done"
            );
        }
    }
}

/// The instant a wall-clock time corresponds to (now, if it is past; at most a day ahead, so
/// clock changes are caught up with).
fn instant_of(at: crate::domain::Timestamp) -> Instant {
    let wait = (at.as_datetime() - time::OffsetDateTime::now_utc())
        .clamp(time::Duration::ZERO, time::Duration::days(1));
    Instant::now() + Duration::try_from(wait).unwrap_or_default()
}

//! `worker`: the background jobs (expiry, sweeps, scheduled verification).

use crate::config::ServiceArgs;
use crate::service::Service;
use std::process::ExitCode;

/// `worker` options.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub(super) service: ServiceArgs,
    #[command(flatten)]
    jobs: JobArgs,
    /// Run every job once and exit (for cron-style scheduling).
    #[arg(long)]
    once: bool,
    /// Print what would expire and be collected now, and why, changing nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The longest any of the jobs' durations may be set to: time arithmetic stays in range.
const TEN_YEARS: u64 = 10 * 365 * 86_400;

/// How the background jobs run (shared by `worker` and `serve --worker`).
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Seconds between sweeps of abandoned upload sessions and staged writes.
    #[arg(
        long,
        env = "ARTIFACTSTORE_WORKER_SWEEP_SECONDS",
        default_value = "300",
        value_parser = crate::config::within::<1, TEN_YEARS>
    )]
    sweep_seconds: u64,
    /// Staged writes older than this many seconds are abandoned.
    #[arg(
        long,
        env = "ARTIFACTSTORE_STAGING_GRACE_SECONDS",
        default_value = "86400", value_parser = crate::config::within::<0, TEN_YEARS>)]
    staging_grace_seconds: u64,
    /// Seconds between verification runs (0: no scheduled verification).
    #[arg(long, env = "ARTIFACTSTORE_VERIFY_EVERY_SECONDS", default_value = "0", value_parser = crate::config::within::<0, TEN_YEARS>)]
    verify_every_seconds: u64,
    /// Fraction of stored copies each verification run checks.
    #[arg(
        long,
        env = "ARTIFACTSTORE_VERIFY_SAMPLE",
        default_value = "0.01",
        value_parser = fraction
    )]
    verify_sample: f64,
    /// Seconds an open package may stay unfinalized before it expires.
    #[arg(
        long,
        env = "ARTIFACTSTORE_OPEN_PACKAGE_GRACE_SECONDS",
        default_value = "604800", value_parser = crate::config::within::<0, TEN_YEARS>)]
    open_grace_seconds: u64,
    /// Packages expired per transaction.
    #[arg(
        long,
        env = "ARTIFACTSTORE_EXPIRE_BATCH",
        default_value = "100",
        value_parser = crate::config::within::<1, 10_000>
    )]
    expire_batch: u64,
    /// Seconds a blob stays after the last file referencing it went.
    #[arg(long, env = "ARTIFACTSTORE_GC_GRACE_SECONDS", default_value = "3600", value_parser = crate::config::within::<0, TEN_YEARS>)]
    gc_grace_seconds: u64,
    /// Days retrieval records are kept (then deleted by the worker's sweep). 0: none are
    /// written, and the sweep deletes those kept.
    #[arg(
        long,
        env = "ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS",
        default_value = "400",
        value_parser = crate::config::within::<0, 36_525>
    )]
    retrieval_records_days: u64,
    /// Seconds between listings of every backend for orphan bytes.
    #[arg(
        long,
        env = "ARTIFACTSTORE_ORPHAN_SWEEP_SECONDS",
        default_value = "86400", value_parser = crate::config::within::<0, TEN_YEARS>)]
    orphan_sweep_seconds: u64,
}

impl JobArgs {
    /// Whether reads are recorded at all (kept more than 0 days).
    pub fn keeps_retrieval_records(&self) -> bool {
        self.retrieval_records_days > 0
    }

    /// Validated worker options.
    pub fn options(&self) -> crate::worker::WorkerOptions {
        use std::time::Duration;
        crate::worker::WorkerOptions {
            sweep_every: Duration::from_secs(self.sweep_seconds),
            staging_grace: Duration::from_secs(self.staging_grace_seconds),
            verify_every: (self.verify_every_seconds > 0)
                .then(|| Duration::from_secs(self.verify_every_seconds)),
            verify_sample: self.verify_sample,
            open_grace: Duration::from_secs(self.open_grace_seconds),
            expire_batch: self.expire_batch as i64,
            gc_grace: Duration::from_secs(self.gc_grace_seconds),
            orphan_sweep_every: Duration::from_secs(self.orphan_sweep_seconds.max(1)),
            retrieval_records_kept: Duration::from_secs(self.retrieval_records_days * 86_400),
        }
    }
}

/// A fraction in (0, 1].
fn fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("`{text}` is not a fraction in (0, 1]")),
    }
}

/// Runs the background jobs until SIGINT/SIGTERM (or once, with `--once`).
pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    use crate::worker::Worker;
    // The daemon stops cleanly on SIGTERM, even one sent while it starts; one-shot runs
    // (`--once`, `--dry-run`) keep the default: SIGTERM ends them.
    let term = if args.once || args.dry_run {
        None
    } else {
        Some(super::terminate_signal()?)
    };
    let options = args.jobs.options();
    let settings = args.service.resolve()?;
    let service = Service::start(&settings, settings.migrate_on_start).await?;
    let mut worker = Worker::new(service.registry.clone(), options);
    if args.dry_run {
        let due = worker.dry_run().await;
        let collectable = worker.dry_run_collection().await;
        service.shutdown().await;
        print_dry_run(&due?, &collectable?);
        return Ok(ExitCode::SUCCESS);
    }
    let code = if args.once {
        let report = worker.run_once().await;
        service.shutdown().await;
        print_report(&report?)
    } else {
        let bus = crate::events::EventBus::start(
            &service.database.url,
            crate::events::LongPollLimits::default(),
        );
        let probes = crate::api::metrics_listener::Probes {
            registry: service.registry.clone(),
            bus: bus.clone(),
            readiness: std::sync::Arc::new(crate::health::ReadinessProbe::new(
                service.registry.clone(),
                bus.clone(),
            )),
            process: "worker",
        };
        let metrics = super::start_metrics(settings.metrics_listen, probes).await?;
        if let Some((at, _)) = &metrics {
            super::announce(&format!("metrics on http://{at}/metrics\n"));
        }
        tracing::info!("worker started");
        worker.run(&bus, shutdown(term)).await;
        bus.close();
        if let Some((_, task)) = metrics {
            task.abort();
        }
        tracing::info!("worker stopped");
        service.shutdown().await;
        ExitCode::SUCCESS
    };
    Ok(code)
}

/// What a dry run found, one line each, then the counts.
fn print_dry_run(due: &[crate::registry::Expiry], collectable: &[crate::registry::Collectable]) {
    for e in due {
        println!(
            "would expire package {} (tenant {}, class {}): {} since {}",
            e.package_id,
            e.tenant,
            e.retention_class,
            match e.reason {
                crate::retention::DueReason::Retention => "retention ran out",
                crate::retention::DueReason::Abandoned => "never finalized",
            },
            e.due_at
        );
    }
    for c in collectable {
        println!(
            "would collect {} ({} bytes): unreferenced since {}",
            c.address, c.size, c.unreferenced_since
        );
    }
    println!(
        "{} packages would expire, {} blobs would be collected",
        due.len(),
        collectable.len()
    );
}

/// Logs and prints what one pass did; exits 1 when verification found bad copies.
fn print_report(report: &crate::worker::PassReport) -> ExitCode {
    crate::worker::log(report);
    println!(
        "expired {} packages; collected {} blobs ({} bytes) and {} orphans; expired {} upload \
         sessions, removed {} abandoned staged writes{}",
        report.expired.len(),
        report.collected.blobs,
        report.collected.bytes,
        report.collected.orphans,
        report.uploads_expired,
        report.staging_removed,
        report
            .verified
            .as_ref()
            .map(|v| format!(
                "; verified {} copies: {} ok, {} failed, {} missing, {} unreadable",
                v.ok + v.failed + v.missing,
                v.ok,
                v.failed,
                v.missing,
                v.errors
            ))
            .unwrap_or_default()
    );
    match &report.verified {
        Some(v) if v.failed + v.missing > 0 => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

async fn shutdown(term: Option<tokio::signal::unix::Signal>) {
    let Some(mut term) = term else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

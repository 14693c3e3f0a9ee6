//! Server-side commands: serve, migrate, replay.

use crate::api::{AppState, app};
use crate::config::ServiceArgs;
use crate::service::{DatabaseHandle, Service};
use anyhow::Context as _;
use std::process::ExitCode;

/// `serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub(super) service: ServiceArgs,
    /// Also run the background jobs (expiry, collection, sweeps) in this process, as
    /// `artifactstore worker` would.
    #[arg(long, env = "ARTIFACTSTORE_SERVE_WORKER")]
    worker: bool,
    #[command(flatten)]
    jobs: super::worker::JobArgs,
    /// The Ed25519 private key (PKCS#8 PEM, e.g. from `openssl genpkey -algorithm ed25519`)
    /// that signs the log's checkpoints and packages' attestations. [default: `<data-dir>/signing-key.pem`, made on
    /// first start]
    #[arg(long, env = "ARTIFACTSTORE_SIGNING_KEY_FILE")]
    signing_key_file: Option<std::path::PathBuf>,
    /// Seconds between signed checkpoints of the event log (one is made only when the log
    /// grew); 0: only on demand (`POST /log/checkpoints`).
    #[arg(long, env = "ARTIFACTSTORE_CHECKPOINT_SECONDS", default_value = "300", value_parser = crate::config::within::<0, 86_400>)]
    checkpoint_seconds: u64,
}

/// Options of commands that only need the database.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    #[command(flatten)]
    pub(super) service: ServiceArgs,
}

/// `replay` options.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub(super) service: ServiceArgs,
    /// Only check: rebuild in a transaction, compare with the current views, roll back.
    /// Exits 1 if they differ.
    #[arg(long)]
    check: bool,
}

/// The retrieval log and its writer task (a finished one when records are not kept).
fn retrieval_log(
    settings: &crate::config::Settings,
    pool: &deadpool_postgres::Pool,
    kept: bool,
) -> (crate::registry::RetrievalLog, tokio::task::JoinHandle<()>) {
    if kept {
        crate::registry::RetrievalLog::start_with(
            pool.clone(),
            settings.retrieval_queue,
            settings.retrieval_wait,
        )
    } else {
        (crate::registry::RetrievalLog::off(), tokio::spawn(async {}))
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let term = super::terminate_signal()?;
    let jobs = args.worker.then(|| args.jobs.options());
    let records_kept = args.jobs.keeps_retrieval_records();
    let settings = args.service.resolve()?;
    refuse_open_development(&settings)?;
    let mut service = Service::start(&settings, settings.migrate_on_start).await?;
    let signer = signing_key(&args, &settings, &service).await?;
    service.registry = service.registry.clone().with_signer(signer.clone());
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    if settings.tokens.is_development() {
        tracing::warn!(
            "no tokens configured (ARTIFACTSTORE_TOKENS / ARTIFACTSTORE_TOKENS_FILE): development \
             mode, every request acts as tenant `default` with every scope"
        );
    }
    let bus = crate::events::EventBus::start(&service.database.url, settings.long_polls);
    let readiness = std::sync::Arc::new(crate::health::ReadinessProbe::new(
        service.registry.clone(),
        bus.clone(),
    ));
    let probes = crate::api::metrics_listener::Probes {
        registry: service.registry.clone(),
        bus: bus.clone(),
        readiness: readiness.clone(),
        process: "serve",
    };
    let metrics = super::start_metrics(settings.metrics_listen, probes).await?;
    // On stdout for scripts and tests that start us on port 0: the API's address first.
    super::announce(&match &metrics {
        Some((at, _)) => format!("listening on http://{address}\nmetrics on http://{at}/metrics\n"),
        None => format!("listening on http://{address}\n"),
    });
    let (retrievals, retrieval_writer) =
        retrieval_log(&settings, service.registry.pool(), records_kept);
    let state = AppState {
        retrievals,
        events: bus.clone(),
        tail: crate::events::TailReader::with_page_bytes(
            service.registry.pool().clone(),
            settings.max_event_page_bytes,
        ),
        max_json_body: settings.max_json_body,
        max_provenance: settings.max_provenance,
        body_idle_timeout: settings.http.body_idle_timeout,
        tokens: settings.tokens.clone(),
        registry: service.registry.clone(),
        readiness,
        signer: signer.clone(),
    };
    let sweeper = background_jobs(jobs, &service.registry, &bus);
    let every = std::time::Duration::from_secs(args.checkpoint_seconds);
    let checkpoints = tokio::spawn(make_checkpoints(service.registry.clone(), signer, every));
    let result = crate::api::serve::run(
        listener,
        app(state),
        shutdown_signal(term, bus.clone()),
        settings.shutdown_grace,
        settings.http,
    )
    .await;
    tracing::info!("server stopped");
    written(retrieval_writer).await;
    sweeper.abort();
    checkpoints.abort();
    if let Some((_, task)) = metrics {
        task.abort();
    }
    service.shutdown().await;
    result.context("server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Without tokens every caller is an admin: only on loopback, or when the operator says so.
fn refuse_open_development(settings: &crate::config::Settings) -> anyhow::Result<()> {
    if settings.tokens.is_development() && !settings.listen.ip().is_loopback() && !settings.dev_mode
    {
        anyhow::bail!(
            "refusing to serve on {} without tokens: every caller would be an admin. Configure \
             tokens (ARTIFACTSTORE_TOKENS_FILE or ARTIFACTSTORE_TOKENS), listen on loopback, or \
             set ARTIFACTSTORE_DEV_MODE=true (--dev-mode) to accept that",
            settings.listen
        );
    }
    Ok(())
}

/// The configured signing key, or the data directory's (made on first start), with its
/// public half recorded for `GET /keys`.
async fn signing_key(
    args: &ServeArgs,
    settings: &crate::config::Settings,
    service: &Service,
) -> anyhow::Result<std::sync::Arc<crate::signing::SigningKey>> {
    use crate::signing::SigningKey;
    let key = match &args.signing_key_file {
        Some(path) => SigningKey::load(path)?,
        None => {
            if settings.database_url.is_some() {
                tracing::warn!(
                    "no ARTIFACTSTORE_SIGNING_KEY_FILE: checkpoints are signed with a key in the \
                     data directory, which goes with it; give every server one kept key"
                );
            }
            SigningKey::load_or_generate(&settings.data_dir.join("signing-key.pem"))?
        }
    };
    service.registry.register_signing_key(&key).await?;
    tracing::info!(key_id = key.id(), "signing log checkpoints");
    Ok(std::sync::Arc::new(key))
}

/// Signs a checkpoint of the log every `every` (never when zero), when it grew since the
/// last one.
async fn make_checkpoints(
    registry: crate::registry::Registry,
    key: std::sync::Arc<crate::signing::SigningKey>,
    every: std::time::Duration,
) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = registry.make_checkpoint(&key).await {
            tracing::warn!(error = %e, "making a log checkpoint failed; trying again later");
        }
    }
}

/// The worker's jobs in the server (`--worker`); without them, a small sweeper of upload
/// sessions (the worker sweeps them itself).
fn background_jobs(
    jobs: Option<crate::worker::WorkerOptions>,
    registry: &crate::registry::Registry,
    bus: &crate::events::EventBus,
) -> tokio::task::JoinHandle<()> {
    match jobs {
        Some(options) => {
            let mut worker = crate::worker::Worker::new(registry.clone(), options);
            let bus = bus.clone();
            tokio::spawn(async move {
                tracing::info!("background jobs running in the server (--worker)");
                let closed = bus.clone();
                worker.run(&bus, async move { closed.closed().await }).await;
            })
        }
        None => tokio::spawn(sweep_uploads(registry.clone())),
    }
}

/// Waits (a while) for the retrieval writer: once the app, and with it the last handle on the
/// log, is gone, it writes what is queued and ends.
async fn written(writer: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(std::time::Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        tracing::error!("retrieval records were still being written at shutdown");
    }
}

/// Removes expired upload sessions and their spooled bytes, every few minutes.
async fn sweep_uploads(registry: crate::registry::Registry) {
    let every = std::time::Duration::from_secs(registry.limits().upload_ttl_seconds.clamp(1, 300));
    loop {
        tokio::time::sleep(every).await;
        match registry.expire_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "expired abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "sweeping upload sessions failed; will retry"),
        }
    }
}

async fn shutdown_signal(mut term: tokio::signal::unix::Signal, bus: crate::events::EventBus) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    // Long-polls answer now with what they have.
    bus.close();
}

pub async fn migrate(args: DbArgs) -> anyhow::Result<ExitCode> {
    let settings = args.service.resolve()?;
    let database = DatabaseHandle::open(&settings).await?;
    let applied = crate::db::migrate(&database.url).await;
    database.close();
    println!("applied {} migration(s)", applied?);
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let settings = args.service.resolve()?;
    let database = DatabaseHandle::open(&settings).await?;
    let result = async {
        crate::db::migrate(&database.url).await?;
        let pool = crate::db::pool(&database.url, 2)?;
        crate::events::replay(&pool, args.check).await
    }
    .await;
    database.close();
    let report = result?;
    let rate = report.events as f64 / report.elapsed.as_secs_f64().max(1e-9);
    match report.identical {
        Some(true) => {
            println!(
                "replayed {} events in {:.2?} ({rate:.0}/s): views match the log",
                report.events, report.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(false) => {
            println!(
                "replayed {} events: views DIFFER from the log (nothing was changed)",
                report.events
            );
            Ok(ExitCode::from(1))
        }
        None => {
            println!(
                "replayed {} events in {:.2?} ({rate:.0}/s)",
                report.events, report.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `postgres` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PostgresCommand {
    /// Print whether the private cluster is running, and its port.
    Status(DataDirArg),
    /// Stop the private cluster (e.g. one a crashed process left running).
    Stop(DataDirArg),
    /// Print the running private cluster's URL, password included (for `pg_dump`,
    /// `pg_restore`, `psql`: pass the password in their environment, not on a command line,
    /// where other users can read it); exit 1 when it is not running.
    Url(DataDirArg),
}

/// Where the private cluster is.
#[derive(Debug, clap::Args)]
pub struct DataDirArg {
    /// Data directory (the cluster is in its `postgres/`).
    #[arg(
        long,
        env = "ARTIFACTSTORE_DATA_DIR",
        default_value = "./.artifactstore"
    )]
    data_dir: std::path::PathBuf,
    /// The cluster's own directory, if not `<data-dir>/postgres`.
    #[arg(long, env = "ARTIFACTSTORE_POSTGRES_DIR")]
    postgres_dir: Option<std::path::PathBuf>,
}

pub async fn postgres(cmd: PostgresCommand) -> anyhow::Result<ExitCode> {
    use crate::db::cluster::{DATABASE, ManagedCluster};
    // What to print, and whether the command did what it was asked.
    let (outcome, done) = tokio::task::spawn_blocking(move || match cmd {
        PostgresCommand::Status(a) => {
            ManagedCluster::running(&a.data_dir, a.postgres_dir.as_deref()).map(|port| match port {
                Some(port) => (format!("running on 127.0.0.1:{port}"), true),
                None => ("not running".to_owned(), true),
            })
        }
        PostgresCommand::Stop(a) => {
            ManagedCluster::stop_existing(&a.data_dir, a.postgres_dir.as_deref()).map(|was| {
                if was {
                    ("stopped".to_owned(), true)
                } else {
                    ("not running".to_owned(), true)
                }
            })
        }
        PostgresCommand::Url(a) => {
            ManagedCluster::running_url(&a.data_dir, a.postgres_dir.as_deref(), DATABASE).map(
                |url| match url {
                    Some(url) => (url, true),
                    None => ("the private cluster is not running".to_owned(), false),
                },
            )
        }
    })
    .await??;
    if done {
        println!("{outcome}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {outcome}");
        Ok(ExitCode::FAILURE)
    }
}

//! Server-side commands: serve, migrate, replay.

use crate::api::{AppState, app};
use crate::config::ServiceArgs;
use crate::service::{DatabaseHandle, Service};
use anyhow::Context as _;
use poem::listener::{Acceptor, Listener, TcpListener};
use std::process::ExitCode;

/// `serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    service: ServiceArgs,
}

/// Options of commands that only need the database.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    #[command(flatten)]
    service: ServiceArgs,
}

/// `replay` options.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Only check: rebuild in a transaction, compare with the current views, roll back.
    /// Exits 1 if they differ.
    #[arg(long)]
    check: bool,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = args.service.resolve()?;
    let service = Service::start(&settings, settings.migrate_on_start).await?;
    let acceptor = TcpListener::bind(settings.listen)
        .into_acceptor()
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    for addr in acceptor.local_addr() {
        tracing::info!(address = %addr, "listening");
        // On stdout for scripts and tests that start us on port 0.
        println!(
            "listening on http://{}",
            addr.as_socket_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
    }
    let state = AppState {
        registry: service.registry.clone(),
    };
    let result = poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown_signal(), Some(settings.shutdown_grace))
        .await;
    tracing::info!("server stopped");
    service.shutdown();
    result.context("server failed")?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
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
        let mut client = crate::db::connect(&database.url).await?;
        crate::events::replay(&mut client, args.check).await
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

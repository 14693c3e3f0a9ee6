//! The `artifactstore` command line: server-side commands over the library, client commands
//! over the HTTP API.

mod client;
mod log;
mod server;
mod storage;
mod verify_package;
mod worker;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// artifact-store: the system of record for generated outputs.
#[derive(Debug, Parser)]
#[command(name = "artifactstore", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax, e.g. `info`, `artifactstore=debug`).
    #[arg(long, global = true, env = "ARTIFACTSTORE_LOG", default_value = "info")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(server::ServeArgs),
    /// Apply pending database migrations.
    Migrate(server::DbArgs),
    /// Rebuild every view from the event log.
    Replay(server::ReplayArgs),
    /// Run the background jobs: package expiry, upload and staging sweeps, scheduled
    /// verification.
    Worker(worker::WorkerArgs),
    /// Re-read stored copies, recompute their digests, record what was found.
    Verify(storage::VerifyArgs),
    /// The event log's proofs.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Check a package offline, trusting only a public key: the attestation's signature, the
    /// manifest it names, and every file's bytes.
    VerifyPackage(verify_package::VerifyPackageArgs),
    /// Storage maintenance.
    #[command(subcommand)]
    Storage(storage::StorageCommand),
    /// Print the OpenAPI document.
    Openapi,
    /// Manage the private PostgreSQL cluster under the data directory.
    #[command(subcommand)]
    Postgres(server::PostgresCommand),
    /// Ask a running server for its health.
    Health(client::ClientArgs),
    /// GET a probe (`/livez`, `/readyz`) and exit 0 if it answers 2xx: for container health
    /// checks.
    Probe(client::ProbeArgs),
    /// Upload a directory tree as a package (in parallel; bytes the server holds are not sent).
    Push(client::PushArgs),
    /// Download a package into a directory, verifying every digest.
    Pull(client::PullArgs),
    /// Print a package's manifest (canonical CBOR, or `--json` for the JCS projection).
    Manifest(client::ManifestArgs),
    /// List packages, newest first.
    Ls(client::LsArgs),
    /// Follow the event stream.
    #[command(subcommand)]
    Events(client::EventsCommand),
    /// Show a package (open ones too) and its files.
    Show(client::PackageArgs),
    /// Finalize a package: immutable from now on, with its manifest.
    Finalize(client::FinalizeArgs),
    /// Download one file of a package by its path, verifying its digests.
    Get(client::GetArgs),
    /// Remove a file from an open package, or the package (open: abandoned; finalized:
    /// withdrawn, with an admin token).
    Rm(client::RmArgs),
    /// Put a legal hold on a package (admin token).
    Hold(client::HoldArgs),
    /// Lift a package's legal hold (admin token).
    Unhold(client::PackageArgs),
    /// A package's retention.
    #[command(subcommand)]
    Retention(client::RetentionCommand),
    /// Show what the token's tenant holds, against its quota.
    Quota(client::QuotaArgs),
    /// Print a shell completion script (`artifactstore completions bash > ...`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the version.
    Version,
}

impl Command {
    /// How a server-side command logs and traces (client commands log as text only).
    fn telemetry(&self) -> Option<&crate::telemetry::TelemetryArgs> {
        let service = match self {
            Command::Serve(args) => &args.service,
            Command::Migrate(args) => &args.service,
            Command::Replay(args) => &args.service,
            Command::Worker(args) => &args.service,
            Command::Verify(args) => &args.service,
            Command::Storage(storage::StorageCommand::Migrate(args)) => &args.service,
            Command::Log(log::LogCommand::Verify(args)) => &args.service,
            _ => return None,
        };
        Some(&service.telemetry)
    }
}

/// Parses arguments, sets up logging and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match crate::config::setting_error(&e, &Cli::command()) {
            Some(line) => {
                eprintln!("error: {line}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let (format, endpoint) = cli.command.telemetry().map_or(("text", None), |t| {
        (t.log_format.as_str(), t.otlp_endpoint.as_deref())
    });
    let telemetry = match crate::telemetry::init(&cli.log, format, endpoint) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => server::serve(args).await,
            Command::Migrate(args) => server::migrate(args).await,
            Command::Replay(args) => server::replay(args).await,
            Command::Postgres(cmd) => server::postgres(cmd).await,
            Command::Verify(args) => storage::verify(args).await,
            Command::Worker(args) => worker::worker(args).await,
            Command::Storage(cmd) => storage::storage(cmd).await,
            Command::Log(log::LogCommand::Save(args)) => {
                client_result(client::log_save(args).await)
            }
            Command::Log(cmd) => log::log(cmd).await,
            Command::VerifyPackage(args) => verify_package::verify_package(args),
            Command::Openapi => {
                println!("{}", crate::api::spec_json());
                Ok(ExitCode::SUCCESS)
            }
            Command::Completions { shell } => Ok(completions(shell)),
            Command::Health(args) => client::health(args).await,
            Command::Probe(args) => client::probe(args).await,
            Command::Push(args) => client_result(client::push(args).await),
            Command::Pull(args) => client_result(client::pull(args).await),
            Command::Manifest(args) => client_result(client::manifest(args).await),
            Command::Ls(args) => client_result(client::ls(args).await),
            Command::Events(cmd) => client_result(client::events(cmd).await),
            Command::Show(args) => client_result(client::show(args).await),
            Command::Finalize(args) => client_result(client::finalize(args).await),
            Command::Get(args) => client_result(client::get(args).await),
            Command::Rm(args) => client_result(client::rm(args).await),
            Command::Hold(args) => client_result(client::hold(args).await),
            Command::Unhold(args) => client_result(client::unhold(args).await),
            Command::Retention(cmd) => client_result(client::retention(cmd).await),
            Command::Quota(args) => client_result(client::quota(args).await),
            Command::Version => {
                println!("artifactstore {}", env!("CARGO_PKG_VERSION"));
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // The runtime's tasks end first (nothing makes spans after), then the last spans are sent.
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A bad setting is a usage error, however it was found (as clap's refusals).
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Client commands print the problem's detail and exit with their own code.
fn client_result(result: Result<ExitCode, client::CliError>) -> anyhow::Result<ExitCode> {
    Ok(result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        e.exit_code()
    }))
}

/// SIGTERM, caught from the moment it is called: a stop asked for while the process is still
/// starting (opening the database, migrating) is honoured once it runs, with a clean exit.
pub(crate) fn terminate_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    anyhow::Context::context(signal(SignalKind::terminate()), "cannot handle SIGTERM")
}

/// Starts the metrics listener the setting asks for (see
/// [`MetricsListen`](crate::config::MetricsListen)), installing the exporter, and answers its
/// address. The listener lives until the returned task is aborted.
pub(crate) async fn start_metrics(
    listen: crate::config::MetricsListen,
    probes: crate::api::metrics_listener::Probes,
) -> anyhow::Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    use crate::config::{DEFAULT_METRICS_LISTEN, MetricsListen};
    let listener = match listen {
        MetricsListen::Off => return Ok(None),
        MetricsListen::At(address) => {
            tokio::net::TcpListener::bind(address).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {address} (ARTIFACTSTORE_METRICS_LISTEN, \
                     --metrics-listen): {e}"
                )
            })?
        }
        MetricsListen::Default => match tokio::net::TcpListener::bind(DEFAULT_METRICS_LISTEN).await
        {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(
                    address = DEFAULT_METRICS_LISTEN,
                    error = %e,
                    "metrics are off: the default metrics address is taken (another \
                     artifactstore process on this host?); set ARTIFACTSTORE_METRICS_LISTEN"
                );
                return Ok(None);
            }
        },
    };
    let address = listener.local_addr()?;
    let exporter = crate::metrics::Exporter::install();
    probes.sample_into(&exporter);
    let task = tokio::spawn(async move {
        if let Err(e) =
            crate::api::metrics_listener::serve(listener, exporter, probes, std::future::pending())
                .await
        {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    tracing::info!(%address, "metrics listening");
    Ok(Some((address, task)))
}

/// Prints lines on stdout in one write, ignoring a closed stdout (a script that read what it
/// needed and went away).
pub(crate) fn announce(lines: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(lines.as_bytes());
    let _ = stdout.flush();
}

/// Prints the shell's completion script for every command and option.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "artifactstore", &mut script);
    match client::emit(&String::from_utf8_lossy(&script)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `log verify`: the event log's hash chain and signed checkpoints, checked from the database.

use crate::config::ServiceArgs;
use crate::registry::{Checkpoint, PublicKey};
use crate::service::DatabaseHandle;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// `log` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Recompute the event log's hash chain from every event and check each signed checkpoint
    /// against it: edited, removed, reordered or truncated history is reported by sequence
    /// number. Exits 0 when the log is intact, 1 otherwise.
    Verify(Box<LogVerifyArgs>),
    /// Save a copy of the log's proofs into a directory, or bring one up to date (a client
    /// command, any token): every event's digest and chain, the token's tenant's own events
    /// in CBOR, the signed checkpoints and the public keys, for `log verify --copy`.
    Save(crate::cli::client::LogSaveArgs),
}

/// `log verify` options.
#[derive(Debug, clap::Args)]
pub struct LogVerifyArgs {
    #[command(flatten)]
    pub(super) service: ServiceArgs,
    /// A checkpoint saved earlier (the JSON `GET /log/checkpoint` answers): the log must still
    /// be the log it signed. Repeatable.
    #[arg(long, value_name = "FILE")]
    from_checkpoint: Vec<PathBuf>,
    /// A public key (PEM, as `GET /keys` lists) to check checkpoints' signatures with, besides
    /// the keys the database holds (which whoever rewrote the log could have replaced).
    #[arg(long, value_name = "PEM")]
    key: Vec<PathBuf>,
    /// Verify a copy saved by `log save` instead of the database: offline, without the
    /// server. Give `--key` to trust only a key you hold (otherwise the keys saved in the
    /// copy are used, with a warning).
    #[arg(long, value_name = "DIR")]
    copy: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

pub async fn log(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        LogCommand::Verify(args) => args,
        LogCommand::Save(_) => unreachable!("`log save` is a client command, dispatched as one"),
    };
    let mut given = Vec::new();
    for path in &args.from_checkpoint {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let checkpoint: Checkpoint = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a checkpoint", path.display()))?;
        given.push(checkpoint);
    }
    let mut keys = Vec::new();
    for path in &args.key {
        let pem = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let public_key = crate::signing::public_key_from_pem(&pem)
            .with_context(|| path.display().to_string())?;
        keys.push(PublicKey {
            key_id: crate::signing::key_id(&public_key),
            public_key,
            first_used: crate::domain::Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        });
    }
    let bar = crate::cli::client::counter(args.quiet, "{pos} events checked ({per_sec})");
    if let Some(dir) = &args.copy {
        if keys.is_empty() {
            eprintln!(
                "warning: checking signatures with the keys saved in the copy; give --key to \
                 trust only a key you hold"
            );
            keys = crate::registry::log_copy::saved_keys(dir)?;
        }
        let report =
            crate::registry::log_copy::verify_copy(dir, given, keys, &|n| bar.set_position(n));
        bar.finish_and_clear();
        let report = report?;
        println!(
            "{} of the tenant's own events compared with their links",
            report.own_events
        );
        return Ok(print_report(&report, "the copy"));
    }
    let settings = args.service.resolve()?;
    let database = DatabaseHandle::open_existing(&settings).await?;
    let report = async {
        let pool = crate::db::pool(&database.url, 2)?;
        crate::registry::verify_log(&pool, given, keys, &|n| bar.set_position(n)).await
    }
    .await;
    bar.finish_and_clear();
    database.close();
    Ok(print_report(&report?, "the log"))
}

/// Prints what was found; exit 0 when nothing is wrong, 1 otherwise.
fn print_report(report: &crate::registry::LogReport, what: &str) -> ExitCode {
    for problem in &report.problems {
        println!("{problem}");
    }
    match report.signed_through {
        Some(signed) if signed < report.last => println!(
            "signed through event {signed}: events {}..={} are not under a checkpoint yet",
            signed + 1,
            report.last
        ),
        _ => {}
    }
    if report.problems.is_empty() {
        println!(
            "{what} is intact: {} events chained, {} checkpoints verified",
            report.events, report.checkpoints
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "{what} is NOT intact: {} problems in {} events and {} checkpoints",
            report.problems.len(),
            report.events,
            report.checkpoints
        );
        ExitCode::from(1)
    }
}

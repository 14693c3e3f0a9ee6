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
    Verify(LogVerifyArgs),
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
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

pub async fn log(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    let LogCommand::Verify(args) = cmd;
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
    let settings = args.service.resolve()?;
    let database = DatabaseHandle::open_existing(&settings).await?;
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        if args.quiet {
            indicatif::ProgressDrawTarget::hidden()
        } else {
            indicatif::ProgressDrawTarget::stderr()
        },
    );
    bar.set_message("events checked");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{pos} {msg} ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let report = async {
        let pool = crate::db::pool(&database.url, 2)?;
        crate::registry::verify_log(&pool, given, keys, &|n| bar.set_position(n)).await
    }
    .await;
    bar.finish_and_clear();
    database.close();
    let report = report?;
    for problem in &report.problems {
        println!("{problem}");
    }
    if report.problems.is_empty() {
        println!(
            "the log is intact: {} events chained, {} checkpoints verified",
            report.events, report.checkpoints
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "the log is NOT intact: {} problems in {} events and {} checkpoints",
            report.problems.len(),
            report.events,
            report.checkpoints
        );
        Ok(ExitCode::from(1))
    }
}

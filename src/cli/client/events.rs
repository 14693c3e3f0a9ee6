//! `events tail`: follow the event stream, one event per line.

use super::ClientArgs;
use super::api::CliError;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// `events` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Follow the stream from a sequence; reconnects on errors and resumes after the last
    /// event printed.
    Tail(TailArgs),
}

/// `events tail` options.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Start after this sequence (0: the whole log). Default: from the head, only events
    /// committed from now on (as `tail -f`).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    since: Option<i64>,
    /// Only event types starting with this prefix (e.g. `v1.package.`).
    #[arg(long = "type")]
    type_prefix: Option<String>,
    /// Print each event as JSON, as the server sent it (default: `sequence time type
    /// subject` lines).
    #[arg(long)]
    json: bool,
    /// Stop once caught up instead of following (for scripts).
    #[arg(long)]
    once: bool,
}

/// Runs an `events` subcommand.
pub async fn events(command: EventsCommand) -> Result<ExitCode, CliError> {
    let EventsCommand::Tail(args) = command;
    let store = super::api::store(&args.client)?;
    // -1 asks the server for its head.
    let mut since = args.since.unwrap_or(-1);
    let mut backoff = Duration::from_millis(200);
    loop {
        let wait = if args.once { 0 } else { 30 };
        let page = match store
            .events_page(since, args.type_prefix.as_deref(), wait)
            .await
        {
            Ok(page) => page,
            // Authentication and bad requests will not get better by retrying.
            Err(e) if matches!(e.status(), Some(400 | 401 | 403 | 422)) => return Err(e.into()),
            Err(e) => {
                eprintln!("warning: {e}; retrying in {backoff:?} from sequence {since}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let mut out = std::io::stdout().lock();
        for event in &page.events {
            let line = if args.json {
                serde_json::to_string(event).map_err(|e| CliError::other(e.to_string()))?
            } else {
                format!(
                    "{:>8}  {}  {:<28}  {}",
                    event.sequence,
                    chrono::DateTime::parse_from_rfc3339(&event.occurred_at).map_or_else(
                        |_| event.occurred_at.clone(),
                        |t| {
                            t.with_timezone(&chrono::Local)
                                .format("%Y-%m-%d %H:%M:%S")
                                .to_string()
                        }
                    ),
                    event.type_,
                    event.subject_id
                )
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(ExitCode::SUCCESS); // stdout closed (e.g. piped into head)
            }
            since = event.sequence;
        }
        let _ = out.flush();
        // Filtered-out events still advance the position.
        since = since.max(page.next_since);
        if args.once && page.events.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

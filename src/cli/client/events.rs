//! `events tail`: follow the event stream, one JSON event per line.

use super::ClientArgs;
use super::api::{ApiClient, CliError};
use serde_json::Value;
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
    /// Start after this sequence (0: from the beginning).
    #[arg(long, default_value = "0")]
    since: i64,
    /// Only event types starting with this prefix (e.g. `v1.package.`).
    #[arg(long = "type")]
    type_prefix: Option<String>,
    /// Print the whole event as JSON (default: `sequence type subject_id` lines).
    #[arg(long)]
    json: bool,
    /// Stop once caught up instead of following (for scripts).
    #[arg(long)]
    once: bool,
}

/// Runs an `events` subcommand.
pub async fn events(command: EventsCommand) -> Result<ExitCode, CliError> {
    let EventsCommand::Tail(args) = command;
    let client = ApiClient::new(&args.client)?;
    let mut since = args.since;
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut query = vec![
            ("since".to_owned(), since.to_string()),
            ("limit".into(), "500".into()),
        ];
        query.push(("wait".into(), if args.once { "0" } else { "30" }.into()));
        if let Some(t) = &args.type_prefix {
            query.push(("type".into(), t.clone()));
        }
        let request = client
            .request(reqwest::Method::GET, "/events")
            .header(reqwest::header::ACCEPT, "application/json")
            .query(&query)
            .timeout(Duration::from_secs(75));
        let page: Value = match client.send(request).await {
            Ok(resp) => match resp.json().await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("warning: bad page ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
            // Authentication and bad requests will not get better by retrying.
            Err(e) if e.code == 5 || e.message.contains("(400)") || e.message.contains("(422)") => {
                return Err(e);
            }
            Err(e) => {
                eprintln!("warning: {e}; retrying in {backoff:?} from sequence {since}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let mut out = std::io::stdout().lock();
        for event in &events {
            let line = if args.json {
                event.to_string()
            } else {
                format!(
                    "{} {} {}",
                    event["sequence"],
                    event["type"].as_str().unwrap_or(""),
                    event["subject_id"].as_str().unwrap_or("")
                )
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(ExitCode::SUCCESS); // stdout closed (e.g. piped into head)
            }
            since = event["sequence"].as_i64().unwrap_or(since);
        }
        let _ = out.flush();
        // Filtered-out events still advance the position.
        since = since.max(page["next_since"].as_i64().unwrap_or(since));
        if args.once && events.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

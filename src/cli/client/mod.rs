//! Client commands over the HTTP API: health, ls, show, manifest, push, pull, get, finalize,
//! rm, hold, unhold, retention, events.
//!
//! Exit codes: 0 success; 1 the server refused (a 4xx problem) or something failed; 2 the
//! server cannot be reached; 3 not found; 4 verification failed (a digest did not match);
//! 5 authentication or permission refused.

mod api;
mod events;
mod lifecycle;
mod log_save;
mod pull;
mod push;

pub use api::CliError;
pub use events::{EventsCommand, events};
pub use lifecycle::{
    FinalizeArgs, GetArgs, HoldArgs, PackageArgs, ProvenanceArgs, QuotaArgs, RetentionCommand,
    RmArgs, emit, finalize, get, hold, quota, retention, rm, show, unhold,
};
pub use log_save::{LogSaveArgs, save as log_save};
pub use pull::{PullArgs, pull};
pub use push::{PushArgs, push};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::process::ExitCode;

/// BLAKE3 of a file as bare hex, reading 1 MiB at a time (memory stays flat whatever the size).
pub(crate) fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// A bytes progress bar on stderr (drawn only when stderr is a terminal).
pub(crate) fn progress(total: u64, hidden: bool, message: &'static str) -> ProgressBar {
    let target = if hidden {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// A counter on stderr (nothing when `hidden`) drawn with `template` (e.g. `{pos} events
/// checked ({per_sec})`), for work whose total is not known.
pub(crate) fn counter(hidden: bool, template: &str) -> ProgressBar {
    let target = if hidden {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// Where the server is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "ARTIFACTSTORE_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub server: String,
    /// Bearer token.
    #[arg(long, env = "ARTIFACTSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `health`: prints the server's health report; exit 0 when healthy, 1 when not, 2 when the
/// server cannot be reached.
pub async fn health(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/health", args.server.trim_end_matches('/'));
    let response = match reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach {url}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let healthy = response.status().is_success();
    let body: serde_json::Value = response.json().await?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `probe` options.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The probe's URL, e.g. `http://127.0.0.1:8000/readyz` or the metrics listener's
    /// `http://127.0.0.1:9464/livez`.
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value = "5", value_parser = clap::value_parser!(u64).range(1..=300))]
    timeout_seconds: u64,
}

/// `probe`: for container health checks in images without curl. Prints the answer; exits 0
/// on a 2xx, 1 on another status, 2 when unreachable.
pub async fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let response = match reqwest::Client::new()
        .get(&args.url)
        .timeout(std::time::Duration::from_secs(args.timeout_seconds))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach {}: {e}", args.url);
            return Ok(ExitCode::from(2));
        }
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{} {}", status.as_u16(), body.trim());
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ls` options.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only this producer.
    #[arg(long)]
    producer: Option<String>,
    /// Only this subject.
    #[arg(long)]
    subject: Option<String>,
    /// `open`, `finalized`, `expired`, `abandoned` or `withdrawn`.
    #[arg(long)]
    status: Option<String>,
    /// Metadata filter `key=value` (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// At most this many packages.
    #[arg(long, default_value = "50")]
    limit: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// `ls`: packages, newest first.
pub async fn ls(args: LsArgs) -> Result<ExitCode, CliError> {
    use artifactstore_client::types::Status;
    let store = api::store(&args.client)?;
    let status = args
        .status
        .as_deref()
        .map(|s| {
            s.parse::<Status>().map_err(|_| {
                CliError::usage(format!(
                    "--status `{s}` is not one of: open, finalized, expired, abandoned, withdrawn"
                ))
            })
        })
        .transpose()?;
    for m in &args.meta {
        if !m.contains('=') {
            return Err(CliError::usage(format!("--meta `{m}` must be KEY=VALUE")));
        }
    }
    let meta = (!args.meta.is_empty()).then_some(&args.meta);
    let mut printed = 0;
    let mut cursor: Option<String> = None;
    let mut header = !args.json;
    while printed < args.limit {
        let limit = std::num::NonZeroU32::new((args.limit - printed).min(1000) as u32);
        let mut request = store.api().list_packages();
        if let Some(cursor) = &cursor {
            request = request.cursor(cursor.as_str());
        }
        if let Some(limit) = limit {
            request = request.limit(limit);
        }
        if let Some(meta) = meta {
            request = request.meta(meta.clone());
        }
        if let Some(producer) = &args.producer {
            request = request.producer(producer.as_str());
        }
        if let Some(status) = status {
            request = request.status(status);
        }
        if let Some(subject) = &args.subject {
            request = request.subject(subject.as_str());
        }
        let page = store.call(request.send()).await?;
        // The header once the first page is in: none before a failure.
        let mut text = String::new();
        if std::mem::take(&mut header) {
            text.push_str(&format!(
                "{:<36}  {:<9}  {:>6}  {:>10}  {:<19}  PRODUCER / SUBJECT\n",
                "ID", "STATUS", "FILES", "SIZE", "CREATED"
            ));
        }
        text.push_str(&ls_lines(&page.items, args.json)?);
        emit(&text)?;
        printed += page.items.len();
        match page.next_cursor {
            Some(c) if !page.items.is_empty() => cursor = Some(c),
            _ => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ls` lines: one JSON object per package, or table rows (human sizes, local times).
fn ls_lines(
    packages: &[artifactstore_client::types::Package],
    json: bool,
) -> Result<String, CliError> {
    let mut text = String::new();
    for p in packages {
        if json {
            let line = serde_json::to_string(p).map_err(|e| CliError::other(e.to_string()))?;
            text.push_str(&line);
            text.push('\n');
        } else {
            text.push_str(&format!(
                "{:<36}  {:<9}  {:>6}  {:>10}  {:<19}  {} / {}\n",
                p.id,
                p.status,
                p.file_count,
                indicatif::HumanBytes(p.total_size).to_string(),
                p.created_at
                    .with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S"),
                p.producer.as_str(),
                p.subject.as_str(),
            ));
        }
    }
    Ok(text)
}

/// `manifest` options.
#[derive(Debug, clap::Args)]
pub struct ManifestArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Package id.
    package: String,
    /// Print the JCS JSON projection instead of the canonical CBOR bytes.
    #[arg(long)]
    json: bool,
}

/// `manifest`: the canonical CBOR bytes (for piping), or with `--json` the JCS projection.
pub async fn manifest(args: ManifestArgs) -> Result<ExitCode, CliError> {
    use artifactstore_client::ClientInfo;
    use std::io::{IsTerminal, Write};
    let store = api::store(&args.client)?;
    let id: uuid::Uuid = args
        .package
        .parse()
        .map_err(|_| CliError::usage(format!("`{}` is not a package id (a UUID)", args.package)))?;
    if !args.json && std::io::stdout().is_terminal() {
        return Err(CliError::usage(
            "the CBOR manifest is binary: redirect it to a file, or use --json".into(),
        ));
    }
    let bytes: Vec<u8> = if args.json {
        // The JCS bytes as the server sent them (a typed value would be re-serialized in
        // another member order, no longer canonical).
        let url = format!("{}/packages/{id}/manifest.json", store.api().baseurl());
        use artifactstore_client::StoreError;
        let response = store
            .api()
            .client()
            .get(url)
            .send()
            .await
            .map_err(|e| CliError::from(StoreError::transport(&e)))?;
        if !response.status().is_success() {
            return Err(StoreError::from_response(response).await.into());
        }
        response
            .bytes()
            .await
            .map_err(|e| CliError::other(format!("reading the manifest: {e}")))?
            .to_vec()
    } else {
        api::manifest_bytes(&store, &id).await?
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .map_err(|e| CliError::other(format!("writing stdout: {e}")))?;
    if args.json {
        let _ = writeln!(out);
    }
    Ok(ExitCode::SUCCESS)
}

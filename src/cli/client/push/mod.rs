//! `push <dir>`: upload a directory tree as a package, in parallel, skipping bytes the server
//! already holds. The local tree (listing, hashing, media types) is in `tree.rs`; sending one
//! file (raw, or by session with retries) and linking held bytes, in `upload.rs`.

mod tree;
mod upload;

use super::ClientArgs;
use super::api::CliError;
use super::progress;
use artifactstore_client::{Store, types};
use futures::StreamExt;
use indicatif::HumanBytes;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tree::{LocalFile, MediaTypes, globs, hash_all, walk};
use upload::Uploader;

/// `push` options.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Directory to upload.
    dir: PathBuf,
    /// What produced the files (for a new package).
    #[arg(long, required_unless_present = "package")]
    producer: Option<String>,
    /// What the files are about (for a new package).
    #[arg(long, required_unless_present = "package")]
    subject: Option<String>,
    /// Add to (or resume into) this open package instead of creating one: files it already
    /// holds with the same bytes are skipped; a path it holds with other bytes is an error.
    #[arg(long, conflicts_with_all = ["producer", "subject", "retention_class", "meta"])]
    package: Option<String>,
    /// Leave out files whose path in the tree matches this glob (`*.log`, `target/**`;
    /// repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// The media type of files whose path matches the glob (`'*.log=text/plain'`;
    /// repeatable, the first match wins). Others: guessed from the name's extension.
    #[arg(long, value_name = "GLOB=TYPE")]
    media_type: Vec<String>,
    /// Retention class (default: the server's, `standard`).
    #[arg(long)]
    retention_class: Option<String>,
    /// Metadata `key=value` (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Finalize the package after uploading.
    #[arg(long)]
    finalize: bool,
    #[command(flatten)]
    provenance: super::ProvenanceArgs,
    /// Parallel uploads.
    #[arg(long, default_value = "8")]
    jobs: usize,
    /// Files at least this large go through resumable upload sessions.
    #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
    session_threshold: u64,
    /// Chunk size for upload sessions.
    #[arg(long, default_value = "16MiB", value_parser = parse_size_arg)]
    chunk_size: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    crate::config::parse_size(text)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is not a size like 16MiB"))
}

/// Uploads the tree; prints the package id on stdout.
pub async fn push(args: PushArgs) -> Result<ExitCode, CliError> {
    let started = Instant::now();
    let store = super::api::store(&args.client)?;
    if !args.dir.is_dir() {
        return Err(CliError::usage(format!(
            "{} is not a directory",
            args.dir.display()
        )));
    }
    // Read before anything is sent: a bad provenance file fails the push at once.
    let finalize_body = args.provenance.body()?;
    if finalize_body.is_some() && !args.finalize {
        return Err(CliError::usage(
            "--provenance is attached at finalize: add --finalize".into(),
        ));
    }
    let exclude = globs(&args.exclude)?;
    let media = MediaTypes::parse(&args.media_type)?;
    let target = Target::of(&store, &args).await?;
    let mut listing = Vec::new();
    walk(&args.dir, &args.dir, &exclude, &mut listing)?;
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    let total: u64 = listing.iter().map(|f| f.2).sum();
    let hidden = args.no_progress;

    // 1. Hash locally (in parallel), so bytes the server already holds are never sent.
    let jobs = args.jobs.max(1);
    let files = hash_all(listing, total, jobs, hidden).await?;

    // 2. The package, and which bytes are missing.
    let (id, files, already) = target.settle(&store, files).await?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let missing = missing_addresses(&store, &files).await?;

    // 3. Upload one file per missing address; then link every other file.
    let (uploads, links) = plan(&files, &missing);
    let bar = progress(total, hidden, "uploading");
    let files = Arc::new(files);
    let ctx = Arc::new(Uploader {
        store: store.clone(),
        package: id,
        bar: bar.clone(),
        threshold: args.session_threshold,
        chunk: args.chunk_size,
        media,
    });
    run_all(&uploads, jobs, |i| {
        let ctx = ctx.clone();
        let files = files.clone();
        async move { ctx.upload(&files[i]).await }
    })
    .await?;
    // Held bytes: one request (and one transaction) per thousand files.
    for batch in links.chunks(crate::registry::MAX_LINK_BATCH) {
        ctx.link_batch(batch.iter().map(|&i| &files[i])).await?;
    }
    bar.finish_and_clear();

    if args.finalize {
        let mut request = store.api().finalize_package().id(id);
        if let Some(body) = finalize_body {
            request = request.body(body);
        }
        store.call(request.send()).await?;
    }
    let sent: u64 = uploads.iter().map(|&i| files[i].size).sum();
    let elapsed = started.elapsed().as_secs_f64();
    if already > 0 {
        eprintln!("{already} files already in the package, skipped");
    }
    let count = |n: usize| format!("{n} file{}", if n == 1 { "" } else { "s" });
    eprintln!(
        "{} ({}): {} uploaded ({}), {} already held by the server; {:.2} s{}",
        count(files.len()),
        HumanBytes(total),
        uploads.len(),
        HumanBytes(sent),
        links.len(),
        elapsed,
        if args.finalize { "; finalized" } else { "" }
    );
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// The content addresses among `files` that the server does not hold, asked a thousand at a
/// time.
async fn missing_addresses(
    store: &Store,
    files: &[LocalFile],
) -> Result<HashSet<String>, CliError> {
    let unique: Vec<String> = {
        let mut seen = HashSet::new();
        files
            .iter()
            .map(|f| format!("blake3:{}", f.blake3))
            .filter(|a| seen.insert(a.clone()))
            .collect()
    };
    let mut missing = HashSet::new();
    for batch in unique.chunks(1000) {
        let request = types::MissingBlobsRequest {
            content_addresses: batch
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| CliError::other(format!("{e}")))?,
        };
        let answer = store
            .call(store.api().missing_blobs().body(request).send())
            .await?;
        missing.extend(answer.missing);
    }
    Ok(missing)
}

/// The package `push` fills.
enum Target {
    /// One to create.
    New(types::CreatePackage),
    /// An open one (`--package`), with its files: path to BLAKE3.
    Existing(uuid::Uuid, HashMap<String, String>),
}

impl Target {
    /// From the options; an existing package's files are read before anything is hashed, so
    /// a package that is not there (or not open) fails at once.
    async fn of(store: &Store, args: &PushArgs) -> Result<Self, CliError> {
        Ok(match &args.package {
            Some(id) => {
                let id = super::api::package_id(id)?;
                Target::Existing(id, held_files(store, id).await?)
            }
            None => Target::New(new_package(args)?),
        })
    }

    /// The package's id, the files it still needs, and how many it already held.
    async fn settle(
        self,
        store: &Store,
        files: Vec<LocalFile>,
    ) -> Result<(uuid::Uuid, Vec<LocalFile>, usize), CliError> {
        match self {
            Target::New(new) => {
                let id = store
                    .call(store.api().create_package().body(new).send())
                    .await?
                    .id;
                Ok((id, files, 0))
            }
            Target::Existing(id, held) => {
                let before = files.len();
                let files = not_yet_in(files, &held, id)?;
                let already = before - files.len();
                Ok((id, files, already))
            }
        }
    }
}

/// The package `push` creates, from its options.
fn new_package(args: &PushArgs) -> Result<types::CreatePackage, CliError> {
    let usage = |what: &str, e: &dyn std::fmt::Display| CliError::usage(format!("{what}: {e}"));
    let mut metadata = HashMap::new();
    for m in &args.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--meta `{m}` must be KEY=VALUE")))?;
        metadata.insert(k.to_owned(), v.to_owned());
    }
    Ok(types::CreatePackage {
        producer: args
            .producer
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| usage("--producer", &e))?,
        subject: args
            .subject
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| usage("--subject", &e))?,
        retention_class: args
            .retention_class
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| usage("--retention-class", &e))?,
        metadata,
    })
}

/// An open package's files: path to BLAKE3.
async fn held_files(store: &Store, id: uuid::Uuid) -> Result<HashMap<String, String>, CliError> {
    let package = store.call(store.api().get_package().id(id).send()).await?;
    if package.status != types::Status::Open {
        return Err(CliError::other(format!(
            "package {id} is {}: only an open package takes files",
            package.status
        )));
    }
    Ok(package
        .files
        .into_iter()
        .map(|f| (f.relative_path.to_string(), f.digests.blake3))
        .collect())
}

/// The local files the package does not hold yet; one it holds at the same path with other
/// bytes is an error (nothing is replaced behind the user's back).
fn not_yet_in(
    files: Vec<LocalFile>,
    held: &HashMap<String, String>,
    id: uuid::Uuid,
) -> Result<Vec<LocalFile>, CliError> {
    let mut left = Vec::with_capacity(files.len());
    for file in files {
        match held.get(file.path.as_str()) {
            None => left.push(file),
            Some(digest) if *digest == file.blake3 => {}
            Some(_) => {
                return Err(CliError::other(format!(
                    "package {id} already has other bytes at `{}`; remove them first \
                     (`artifactstore rm {id} {}`)",
                    file.path, file.path
                )));
            }
        }
    }
    Ok(left)
}

/// Which files to upload (the first with each missing address) and which to link (the rest),
/// as indexes into `files`.
fn plan(files: &[LocalFile], missing: &HashSet<String>) -> (Vec<usize>, Vec<usize>) {
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let (mut uploads, mut links) = (Vec::new(), Vec::new());
    for (i, f) in files.iter().enumerate() {
        let address = format!("blake3:{}", f.blake3);
        if missing.contains(&address) && !first_of.contains_key(&address) {
            first_of.insert(address, i);
            uploads.push(i);
        } else {
            links.push(i);
        }
    }
    (uploads, links)
}

async fn run_all<F, Fut>(items: &[usize], jobs: usize, f: F) -> Result<(), CliError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let results: Vec<_> = futures::stream::iter(items.iter().copied())
        .map(f)
        .buffer_unordered(jobs)
        .collect()
        .await;
    results.into_iter().collect()
}

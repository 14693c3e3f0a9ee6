//! `push <dir>`: upload a directory tree as a package, in parallel, skipping bytes the server
//! already holds.

use super::ClientArgs;
use super::api::CliError;
use super::{hash_file, progress};
use crate::domain::RelativePath;
use artifactstore_client::{Store, StoreError, types};
use futures::StreamExt;
use indicatif::ProgressBar;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

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

/// Files' media types: the first `--media-type GLOB=TYPE` whose glob matches, else guessed
/// from the name's extension (`application/octet-stream` when the name says nothing).
struct MediaTypes(Vec<(globset::GlobMatcher, String)>);

impl MediaTypes {
    fn parse(rules: &[String]) -> Result<Self, CliError> {
        let usage = |rule: &str, why: &dyn std::fmt::Display| {
            CliError::usage(format!("--media-type `{rule}`: {why}"))
        };
        rules
            .iter()
            .map(|rule| {
                let (glob, media) = rule
                    .rsplit_once('=')
                    .ok_or_else(|| usage(rule, &"must be GLOB=TYPE"))?;
                crate::domain::validate_label("media type", media).map_err(|e| usage(rule, &e))?;
                let glob = globset::Glob::new(glob).map_err(|e| usage(rule, &e))?;
                Ok((glob.compile_matcher(), media.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(MediaTypes)
    }

    fn of(&self, path: &RelativePath) -> String {
        self.0
            .iter()
            .find(|(glob, _)| glob.is_match(path.as_str()))
            .map_or_else(
                || {
                    mime_guess::from_path(path.as_str())
                        .first_raw()
                        .unwrap_or(crate::registry::DEFAULT_MEDIA_TYPE)
                        .to_owned()
                },
                |(_, media)| media.clone(),
            )
    }
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    crate::config::parse_size(text)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is not a size like 16MiB"))
}

struct LocalFile {
    path: RelativePath,
    full: PathBuf,
    size: u64,
    blake3: String,
}

fn walk(
    root: &Path,
    dir: &Path,
    exclude: &globset::GlobSet,
    out: &mut Vec<(RelativePath, PathBuf, u64)>,
) -> Result<(), CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::other(format!("reading {}: {e}", dir.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| CliError::other(format!("reading {}: {e}", dir.display())))?;
        let full = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| CliError::other(e.to_string()))?;
        if kind.is_dir() {
            walk(root, &full, exclude, out)?;
            continue;
        }
        // Regular files, and symlinks to regular files; never descend through symlinks.
        let meta = std::fs::metadata(&full)
            .map_err(|e| CliError::other(format!("{}: {e}", full.display())))?;
        if !meta.is_file() {
            continue;
        }
        let relative = full.strip_prefix(root).expect("inside root");
        let text = relative
            .to_str()
            .ok_or_else(|| CliError::other(format!("{} is not valid UTF-8", relative.display())))?;
        // Names are stored in NFC (one spelling per name); file systems that decompose them
        // (macOS) hand out NFD.
        let text: String = unicode_normalization::UnicodeNormalization::nfc(text).collect();
        if exclude.is_match(&text) {
            continue;
        }
        let path = RelativePath::new(&text).map_err(|e| CliError::other(e.to_string()))?;
        out.push((path, full, meta.len()));
    }
    Ok(())
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
        store
            .call(store.api().finalize_package().id(id).send())
            .await?;
    }
    let sent: u64 = uploads.iter().map(|&i| files[i].size).sum();
    let elapsed = started.elapsed().as_secs_f64();
    if already > 0 {
        eprintln!("{already} files already in the package, skipped");
    }
    eprintln!(
        "{} files, {} bytes: {} uploaded ({} bytes), {} already held by the server; {:.2} s{}",
        files.len(),
        total,
        uploads.len(),
        sent,
        links.len(),
        elapsed,
        if args.finalize { "; finalized" } else { "" }
    );
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// Hashes every file of the listing, `jobs` at a time, with a progress bar.
async fn hash_all(
    listing: Vec<(RelativePath, PathBuf, u64)>,
    total: u64,
    jobs: usize,
    hidden: bool,
) -> Result<Vec<LocalFile>, CliError> {
    let bar = progress(total, hidden, "hashing");
    let files = futures::stream::iter(listing)
        .map(|(path, full, size)| {
            let bar = bar.clone();
            async move {
                let full2 = full.clone();
                let blake3 = tokio::task::spawn_blocking(move || hash_file(&full2))
                    .await
                    .map_err(|e| CliError::other(e.to_string()))?
                    .map_err(|e| CliError::other(format!("reading {}: {e}", full.display())))?;
                bar.inc(size);
                Ok::<_, CliError>(LocalFile {
                    path,
                    full,
                    size,
                    blake3,
                })
            }
        })
        .buffered(jobs)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    bar.finish_and_clear();
    Ok(files)
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

/// Which files to upload (the first with each missing address) and which to link (the rest),
/// as indexes into `files`.
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

/// The `--exclude` globs as one matcher.
fn globs(patterns: &[String]) -> Result<globset::GlobSet, CliError> {
    let usage = |e: &dyn std::fmt::Display| CliError::usage(format!("--exclude: {e}"));
    let mut set = globset::GlobSetBuilder::new();
    for glob in patterns {
        set.add(globset::Glob::new(glob).map_err(|e| usage(&e))?);
    }
    set.build().map_err(|e| usage(&e))
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

struct Uploader {
    store: Store,
    package: uuid::Uuid,
    bar: ProgressBar,
    threshold: u64,
    chunk: u64,
    media: MediaTypes,
}

/// A failure about one file, as the CLI reports it.
fn about(file: &LocalFile, e: StoreError) -> CliError {
    let e = CliError::from(e);
    CliError {
        message: format!("{}: {}", file.path, e.message),
        ..e
    }
}

/// Tries of one request in a row before giving up: with [`StoreError::retry_wait`], more than
/// the 30 s a completion (or 10 s a chunk) of a server that died holds a session.
const TRIES: u32 = 12;

impl Uploader {
    async fn upload(&self, file: &LocalFile) -> Result<(), CliError> {
        if file.size >= self.threshold {
            return self.upload_session(file).await;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let handle = tokio::fs::File::open(&file.full)
                .await
                .map_err(|e| CliError::other(format!("{}: {e}", file.full.display())))?;
            let bar = self.bar.clone();
            let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = sent.clone();
            // (The bytes hashed: a file grown since is cut there, and its digest refused.)
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::io::AsyncReadExt::take(handle, file.size),
                256 * 1024,
            )
            .inspect(move |c| {
                if let Ok(c) = c {
                    bar.inc(c.len() as u64);
                    counter.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let digest = format!("blake3:{}", file.blake3);
            let put = self
                .store
                .api()
                .put_file()
                .id(self.package)
                .relative_path(file.path.as_str())
                .expected_digest(digest)
                .media_type(self.media.of(&file.path))
                .body(artifactstore_client::sized_body(stream, file.size))
                .send();
            match self.store.call(put).await {
                Ok(_) => return Ok(()),
                // A try after one whose answer was lost: the file may be there already.
                Err(e) if attempt > 1 && e.status() == Some(409) && self.holds(file).await => {
                    return Ok(());
                }
                // Transport failures and server unavailability are worth another try.
                Err(e) if attempt < TRIES && e.is_retriable() => {
                    self.bar
                        .dec(sent.load(std::sync::atomic::Ordering::Relaxed));
                    tokio::time::sleep(e.retry_wait(attempt)).await;
                }
                Err(e) => return Err(about(file, e)),
            }
        }
    }

    async fn upload_session(&self, file: &LocalFile) -> Result<(), CliError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let invalid = |e: &dyn std::fmt::Display| CliError::other(format!("{}: {e}", file.path));
        let new = types::CreateUpload {
            package_id: self.package,
            relative_path: file.path.as_str().parse().map_err(|e| invalid(&e))?,
            size: Some(file.size),
            expected_digest: Some(
                format!("blake3:{}", file.blake3)
                    .parse()
                    .map_err(|e| invalid(&e))?,
            ),
            media_type: Some(self.media.of(&file.path).parse().map_err(|e| invalid(&e))?),
            replace: None,
        };
        let mut attempt = 0;
        let session = loop {
            attempt += 1;
            match self
                .store
                .call(self.store.api().create_upload().body(new.clone()).send())
                .await
            {
                Ok(session) => break session,
                // (A session whose answer was lost expires unused.)
                Err(e) if attempt < TRIES && e.is_retriable() => {
                    tokio::time::sleep(e.retry_wait(attempt)).await;
                }
                Err(e) => return Err(about(file, e)),
            }
        };
        let mut offset = 0u64;
        let mut failures = 0;
        while offset < file.size {
            let len = self.chunk.min(file.size - offset);
            let mut handle = tokio::fs::File::open(&file.full)
                .await
                .map_err(|e| CliError::other(format!("{}: {e}", file.full.display())))?;
            handle
                .seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| CliError::other(e.to_string()))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(handle.take(len), 256 * 1024);
            let range = format!("bytes {offset}-{}/{}", offset + len - 1, file.size)
                .parse::<artifactstore_client::types::AppendUploadContentRange>()
                .map_err(|e| invalid(&e))?;
            let chunk = self
                .store
                .api()
                .append_upload()
                .id(session.id)
                .content_range(range)
                .body(artifactstore_client::sized_body(stream, len))
                .send();
            match self.store.call(chunk).await {
                Ok(_) => {
                    offset += len;
                    self.bar.inc(len);
                    failures = 0;
                }
                // What may pass, and what says the session is elsewhere than this chunk thought
                // (416: another offset; 429: busy). Not what will not change (400, 409, 413).
                Err(e) if failures < TRIES && (e.is_retriable() || e.status() == Some(416)) => {
                    // Resume from what the server holds (behind a load balancer, maybe another
                    // server: one that died mid-chunk holds the session for up to 10 s).
                    failures += 1;
                    tokio::time::sleep(e.retry_wait(failures)).await;
                    // (Not known now: the next chunk is refused with the offset, or asks again.)
                    let Ok(state) = self
                        .store
                        .call(self.store.api().get_upload().id(session.id).send())
                        .await
                    else {
                        continue;
                    };
                    let held = state.offset;
                    if held > offset {
                        self.bar.inc(held - offset);
                    }
                    offset = held;
                }
                Err(e) => return Err(about(file, e)),
            }
        }
        self.complete_session(session.id, file).await
    }

    /// Whether the package holds `file` already (its path, with its bytes).
    async fn holds(&self, file: &LocalFile) -> bool {
        let Ok(package) = self
            .store
            .call(self.store.api().get_package().id(self.package).send())
            .await
        else {
            return false;
        };
        package
            .files
            .iter()
            .any(|f| f.relative_path == file.path.as_str() && f.digests.blake3 == file.blake3)
    }

    /// Completes a session, again on what may pass: the server unreachable or busy (a chunk
    /// or a completion of a server that died still holds the session), or unavailable (503).
    async fn complete_session(
        &self,
        session: uuid::Uuid,
        file: &LocalFile,
    ) -> Result<(), CliError> {
        let mut attempt = 0;
        loop {
            match self
                .store
                .call(self.store.api().complete_upload().id(session).send())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < TRIES && e.is_retriable() => {
                    attempt += 1;
                    tokio::time::sleep(e.retry_wait(attempt)).await;
                }
                // A completion whose answer was lost (the session is gone: 404), or one still
                // running when the tries ran out: the file may be there.
                Err(_) if attempt > 0 && self.holds(file).await => return Ok(()),
                Err(e) => return Err(about(file, e)),
            }
        }
    }

    async fn link_batch<'a>(
        &self,
        files: impl Iterator<Item = &'a LocalFile>,
    ) -> Result<(), CliError> {
        let (mut links, mut bytes) = (Vec::new(), 0);
        for file in files {
            let invalid =
                |e: &dyn std::fmt::Display| CliError::other(format!("{}: {e}", file.path));
            links.push(types::LinkFile {
                relative_path: file.path.as_str().parse().map_err(|e| invalid(&e))?,
                content_address: format!("blake3:{}", file.blake3)
                    .parse()
                    .map_err(|e| invalid(&e))?,
                media_type: Some(self.media.of(&file.path).parse().map_err(|e| invalid(&e))?),
                replace: None,
            });
            bytes += file.size;
        }
        let request = types::LinkFiles { links };
        self.store
            .call(
                self.store
                    .api()
                    .link_files()
                    .id(self.package)
                    .body(request.clone())
                    .send(),
            )
            .await?;
        self.bar.inc(bytes);
        Ok(())
    }
}

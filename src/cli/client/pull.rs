//! `pull <package> <dir>`: download every file, verifying both digests as the bytes stream.

use super::ClientArgs;
use super::api::CliError;
use crate::domain::RelativePath;
use crate::identity::DualHasher;
use artifactstore_client::{Store, types};
use futures::StreamExt;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::io::AsyncWriteExt;

/// `pull` options.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Package id.
    package: String,
    /// Directory to write the files into (created if needed).
    dir: PathBuf,
    /// Parallel downloads.
    #[arg(long, default_value = "8")]
    jobs: usize,
    /// Overwrite existing files whose bytes differ (files that already match are skipped).
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

struct Wanted {
    id: uuid::Uuid,
    path: RelativePath,
    size: u64,
    blake3: String,
    sha256: String,
}

fn wanted(files: &[types::FileInfo]) -> Result<Vec<Wanted>, CliError> {
    files
        .iter()
        .map(|f| {
            Ok(Wanted {
                id: f.id,
                // Never trust a path to stay inside the target directory: validate it here too.
                path: RelativePath::stored(&f.relative_path).map_err(|e| {
                    CliError::verification(format!("server sent an unsafe path: {e}"))
                })?,
                size: f.size,
                blake3: f.digests.blake3.clone(),
                sha256: f.digests.sha256.clone(),
            })
        })
        .collect()
}

async fn matches_local(path: &Path, want: &Wanted) -> bool {
    let path = path.to_owned();
    let (blake3, size) = (want.blake3.clone(), want.size);
    tokio::task::spawn_blocking(move || {
        let Ok(meta) = std::fs::metadata(&path) else {
            return false;
        };
        if meta.len() != size {
            return false;
        }
        super::hash_file(&path).is_ok_and(|h| h == blake3)
    })
    .await
    .unwrap_or(false)
}

async fn download(
    store: &Store,
    dir: &Path,
    want: &Wanted,
    force: bool,
    bar: &ProgressBar,
) -> Result<bool, CliError> {
    let target = dir.join(want.path.as_str());
    if target.exists() {
        if matches_local(&target, want).await {
            bar.inc(want.size);
            return Ok(false);
        }
        if !force {
            return Err(CliError::other(format!(
                "{} exists with other bytes (use --force to overwrite)",
                target.display()
            )));
        }
    }
    let parent = target.parent().expect("joined path has a parent");
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| CliError::other(format!("{}: {e}", parent.display())))?;
    let part = parent.join(format!(
        ".{}.part-{}",
        want.path.file_name(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = async {
        let mut stream = store.call(store.api().download_file().id(want.id).send()).await?.into_inner();
        let mut out = tokio::fs::File::create(&part).await.map_err(|e| CliError::other(format!("{}: {e}", part.display())))?;
        let mut hasher = DualHasher::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| CliError::other(format!("{}: download broke off: {e}", want.path)))?;
            // Never more than the file's size on disk, whatever the server sends.
            received += chunk.len() as u64;
            if received > want.size {
                return Err(CliError::verification(format!(
                    "{}: the server sent more than the file's {} bytes",
                    want.path, want.size
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(|e| CliError::other(format!("{}: {e}", part.display())))?;
            bar.inc(chunk.len() as u64);
        }
        out.sync_all().await.map_err(|e| CliError::other(e.to_string()))?;
        let got = hasher.finalize();
        if got.size != want.size || got.blake3.to_hex() != want.blake3 || got.sha256.to_hex() != want.sha256 {
            return Err(CliError::verification(format!(
                "{}: the downloaded bytes do not match their digests (got blake3:{} sha256:{} size {})",
                want.path,
                got.blake3.to_hex(),
                got.sha256.to_hex(),
                got.size
            )));
        }
        tokio::fs::rename(&part, &target).await.map_err(|e| CliError::other(format!("{}: {e}", target.display())))?;
        Ok(true)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}

/// Downloads and verifies every file of a package.
pub async fn pull(args: PullArgs) -> Result<ExitCode, CliError> {
    let started = std::time::Instant::now();
    let store = super::api::store(&args.client)?;
    let id: uuid::Uuid = args
        .package
        .parse()
        .map_err(|_| CliError::usage(format!("`{}` is not a package id (a UUID)", args.package)))?;
    let package = store.call(store.api().get_package().id(id).send()).await?;
    let files = wanted(&package.files)?;
    // A finalized package's manifest must hash to its digest and list exactly these files.
    if let Some(digest) = &package.manifest_digest {
        let cbor = super::api::manifest_bytes(&store, &id).await?;
        let actual = format!("blake3:{}", blake3::hash(&cbor).to_hex());
        if actual != *digest {
            return Err(CliError::verification(format!(
                "manifest digest is {actual}, the package says {digest}"
            )));
        }
        let manifest = crate::manifest::Manifest::from_cbor(&cbor)
            .map_err(|e| CliError::verification(format!("manifest does not decode: {e}")))?;
        let listed: Vec<_> = manifest
            .files
            .iter()
            .map(|f| (f.relative_path.to_string(), f.digests.blake3.clone()))
            .collect();
        let mut served: Vec<_> = files
            .iter()
            .map(|f| (f.path.to_string(), f.blake3.clone()))
            .collect();
        served.sort();
        if listed != served {
            return Err(CliError::verification(
                "the manifest and the package's file list disagree".into(),
            ));
        }
    }
    tokio::fs::create_dir_all(&args.dir)
        .await
        .map_err(|e| CliError::other(format!("{}: {e}", args.dir.display())))?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = super::progress(total, args.no_progress, "pulling");
    let results: Vec<Result<bool, CliError>> = futures::stream::iter(files.iter())
        .map(|want| download(&store, &args.dir, want, args.force, &bar))
        .buffer_unordered(args.jobs.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut fetched = 0;
    let mut first_error: Option<CliError> = None;
    for r in results {
        match r {
            Ok(true) => fetched += 1,
            Ok(false) => {}
            Err(e) => {
                eprintln!("error: {e}");
                // Verification failures win: they are what a caller must not miss.
                if first_error
                    .as_ref()
                    .is_none_or(|f| e.code == 4 && f.code != 4)
                {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    eprintln!(
        "{} files ({} bytes) verified in {}: {} downloaded, {} already present; {:.2} s",
        files.len(),
        total,
        args.dir.display(),
        fetched,
        files.len() - fetched,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

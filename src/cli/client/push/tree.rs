//! The tree `push` sends: its files (excluded ones left out), their BLAKE3, their media types.

use super::super::api::CliError;
use super::super::{hash_file, progress};
use crate::domain::RelativePath;
use futures::StreamExt;
use std::path::{Path, PathBuf};

/// Files' media types: the first `--media-type GLOB=TYPE` whose glob matches, else guessed
/// from the name's extension (`application/octet-stream` when the name says nothing).
pub(super) struct MediaTypes(Vec<(globset::GlobMatcher, String)>);

impl MediaTypes {
    pub(super) fn parse(rules: &[String]) -> Result<Self, CliError> {
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

    pub(super) fn of(&self, path: &RelativePath) -> String {
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

/// A file of the tree, hashed.
pub(super) struct LocalFile {
    pub path: RelativePath,
    pub full: PathBuf,
    pub size: u64,
    pub blake3: String,
}

pub(super) fn walk(
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

/// The `--exclude` globs as one matcher.
pub(super) fn globs(patterns: &[String]) -> Result<globset::GlobSet, CliError> {
    let usage = |e: &dyn std::fmt::Display| CliError::usage(format!("--exclude: {e}"));
    let mut set = globset::GlobSetBuilder::new();
    for glob in patterns {
        set.add(globset::Glob::new(glob).map_err(|e| usage(&e))?);
    }
    set.build().map_err(|e| usage(&e))
}

/// Hashes every file of the listing, `jobs` at a time, with a progress bar.
pub(super) async fn hash_all(
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

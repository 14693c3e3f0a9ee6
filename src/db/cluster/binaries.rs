//! Finding the PostgreSQL server binaries.

use super::fail;
use crate::error::Result;
use std::path::{Path, PathBuf};

/// `initdb`, `pg_ctl` and `postgres` from `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_server_binaries() -> Result<PathBuf> {
    find_server_binaries_in(
        std::env::var_os("PATH").as_deref(),
        Path::new("/usr/lib/postgresql"),
    )
}

pub(super) fn find_server_binaries_in(
    path: Option<&std::ffi::OsStr>,
    versions_root: &Path,
) -> Result<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(path) = path
        && let Some(dir) = std::env::split_paths(path).find(|d| has_all(d))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(versions_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        fail(format!(
            "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres on PATH \
             and in {}/*/bin). Install them (Debian: `apt-get install postgresql`) or point \
             ARTIFACTSTORE_DATABASE_URL at an existing database.",
            versions_root.display()
        ))
    })
}

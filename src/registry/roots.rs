//! Whether a local backend's root is the one every other server of the database uses.
//!
//! Several servers can share a local backend only through one shared filesystem. The first
//! server to use a local backend writes a marker (a random id) in its root and records it in
//! `local_roots`; every server checks, at start, that its root holds the recorded marker. One
//! that does not is looking at another directory and refuses to start: it would store bytes
//! the others cannot read, answer 404 for theirs, and its verification would call them
//! missing. A local backend that takes no new files (neither the default nor a route's) and
//! holds none is not checked (an S3 fleet's unused built-in `local`). Before the first mark of
//! a backend that already holds bytes (a fleet upgraded to this check), the root must hold
//! some of them, so that the wrong directory is never the one recorded.

use super::Registry;
use crate::error::{Error, Result};
use std::path::Path;
use uuid::Uuid;

pub use crate::storage::local::MARKER_FILE;

/// How many of a backend's stored keys are looked for in a root before its first mark.
const SAMPLE: i64 = 16;

impl Registry {
    /// Checks (and on first use marks) the root of the local backend `backend_id`; `written`:
    /// whether new files may go to it.
    pub async fn check_local_root(
        &self,
        backend_id: &str,
        root: &Path,
        written: bool,
    ) -> Result<()> {
        let client = self.pool().get().await?;
        let held: Vec<String> = client
            .query(
                "SELECT key FROM storage_locations WHERE backend_id = $1 AND status = 'present' \
                 LIMIT $2",
                &[&backend_id, &SAMPLE],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !written && held.is_empty() {
            return Ok(());
        }
        let file = root.join(MARKER_FILE);
        let on_disk = read_marker(&file)?;
        let recorded: Option<Uuid> = client
            .query_opt(
                "SELECT marker FROM local_roots WHERE backend_id = $1",
                &[&backend_id],
            )
            .await?
            .map(|r| r.get(0));
        let not_shared = |theirs: Uuid| {
            Error::InvalidInput(format!(
                "local backend `{backend_id}` at {} is not the directory the other servers of \
                 this database use (its marker is not {theirs}): servers that share a local \
                 backend need one shared filesystem, mounted at the same path on each",
                root.display()
            ))
        };
        if let Some(theirs) = recorded {
            // Looked at again if it differs: a process starting alongside may have written the
            // marker (and then recorded it) after this one first looked.
            let on_disk = if on_disk == Some(theirs) {
                on_disk
            } else {
                read_marker(&file)?
            };
            return if on_disk == Some(theirs) {
                Ok(())
            } else {
                Err(not_shared(theirs))
            };
        }
        let holds_some = held.iter().any(|key| {
            let key = Path::new(key);
            key.is_relative() && root.join(key).is_file()
        });
        if !held.is_empty() && !holds_some {
            return Err(Error::InvalidInput(format!(
                "local backend `{backend_id}` at {} holds none of the bytes the database says it \
                 stores: this is not its directory (servers that share a local backend need one \
                 shared filesystem, mounted at the same path on each)",
                root.display()
            )));
        }
        let ours = match on_disk {
            Some(marker) => marker,
            None => write_marker(&file, Uuid::new_v4())?,
        };
        let theirs = record_marker(&client, backend_id, ours).await?;
        if theirs == ours {
            Ok(())
        } else {
            Err(not_shared(theirs))
        }
    }
}

/// Records `ours` as the backend's marker unless one is recorded already: the one recorded.
async fn record_marker(
    client: &deadpool_postgres::Object,
    backend_id: &str,
    ours: Uuid,
) -> Result<Uuid> {
    let inserted = client
        .query_opt(
            "WITH mark AS (INSERT INTO local_roots (backend_id, marker) VALUES ($1, $2) \
                           ON CONFLICT (backend_id) DO NOTHING RETURNING marker) \
             SELECT marker FROM mark \
             UNION ALL SELECT marker FROM local_roots WHERE backend_id = $1 \
             LIMIT 1",
            &[&backend_id, &ours],
        )
        .await?;
    // None: another server's first mark committed while this statement ran; read it.
    Ok(match inserted {
        Some(row) => row.get(0),
        None => client
            .query_one(
                "SELECT marker FROM local_roots WHERE backend_id = $1",
                &[&backend_id],
            )
            .await?
            .get(0),
    })
}

fn read_marker(file: &Path) -> Result<Option<Uuid>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Uuid::parse_str(text.trim()).map(Some).map_err(|_| {
            Error::InvalidInput(format!("{} does not hold a marker id", file.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::storage(
            "local",
            format!("reading {}: {e}", file.display()),
        )),
    }
}

/// Writes the marker durably, unless another process sharing the root wrote one first: the
/// marker the root holds afterwards (a temporary file, synced, linked into place, which fails
/// rather than replace one there; then the directory synced).
fn write_marker(file: &Path, marker: Uuid) -> Result<Uuid> {
    use std::io::Write;
    let failed =
        |e: std::io::Error| Error::storage("local", format!("writing {}: {e}", file.display()));
    let tmp = file.with_extension(format!("{}.tmp", Uuid::new_v4()));
    let written = std::fs::File::create(&tmp).and_then(|mut out| {
        out.write_all(format!("{marker}\n").as_bytes())?;
        out.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, file));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_marker(file)?.ok_or_else(|| failed(e));
        }
        Err(e) => return Err(failed(e)),
    }
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes marking one new root at once agree on one marker: the second gets the
    /// first's, never replaces it.
    #[test]
    fn the_first_marker_written_stays() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(MARKER_FILE);
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(write_marker(&file, first).unwrap(), first);
        assert_eq!(write_marker(&file, second).unwrap(), first);
        assert_eq!(read_marker(&file).unwrap(), Some(first));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&file, "not an id").unwrap();
        assert!(read_marker(&file).is_err());
    }
}

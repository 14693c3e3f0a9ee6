//! Where a private cluster lives and who may enter it: the server's user (never root), the
//! cluster directory (private, never adopted from someone else, a root-owned fallback when the
//! data directory is out of reach), and its secrets (private from the moment they exist).

use super::fail;
use crate::error::Result;
use nix::unistd::{Gid, Uid, User};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// As root, the user the server runs as; otherwise `None` (run as ourselves).
pub(super) fn unprivileged_user() -> Result<Option<(Uid, Gid)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok(Some((user.uid, user.gid)));
        }
    }
    Err(fail("running as root, and neither a `postgres` nor a `nobody` user exists to run \
              PostgreSQL as; create one (`useradd --system postgres`) or set ARTIFACTSTORE_DATABASE_URL"
        .into()))
}

/// Where clusters go whose data directory the server's user cannot reach: a directory owned
/// by root and writable by nobody else, so no other user can make or swap anything in it.
const FALLBACK_PARENT: &str = "/var/tmp/artifactstore-postgres";

/// The cluster directory: `<data_dir>/postgres`, unless the server's user cannot reach it
/// (e.g. a data directory under a root-only home), in which case a directory under
/// [`FALLBACK_PARENT`] keyed by the data directory's path is used instead. Either way it is a
/// real directory (not a symlink) owned by the server's user with mode 0700: one made by
/// someone else, or open to others, is refused rather than adopted (its `password` and
/// `pgdata` would be theirs to choose).
pub(super) fn cluster_dir(
    data_dir: &Path,
    chosen: Option<&Path>,
    run_as: Option<(Uid, Gid)>,
) -> Result<PathBuf> {
    if let Some(dir) = chosen {
        // The operator's choice: made if missing (its parents too), held to the same rules;
        // one that exists open to others is refused, not narrowed (it may be a directory
        // they use for more than this). Relative to where the server starts.
        let dir = &std::path::absolute(dir)
            .map_err(|e| fail(format!("cannot resolve {}: {e}", dir.display())))?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
        }
        let owner = run_as.unwrap_or((nix::unistd::geteuid(), nix::unistd::getegid()));
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if run_as.is_some() && !can_traverse(parent, owner.0, owner.1) {
            return Err(fail(format!(
                "the PostgreSQL user cannot reach {} (ARTIFACTSTORE_POSTGRES_DIR): choose a \
                 directory it may enter",
                dir.display()
            )));
        }
        return private_dir(dir, owner, false);
    }
    std::fs::create_dir_all(data_dir).map_err(|e| {
        fail(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let data_dir = data_dir
        .canonicalize()
        .map_err(|e| fail(format!("cannot resolve {}: {e}", data_dir.display())))?;
    let preferred = data_dir.join("postgres");
    let Some((uid, gid)) = run_as else {
        let me = (nix::unistd::geteuid(), nix::unistd::getegid());
        return private_dir(&preferred, me, true);
    };
    if can_traverse(&data_dir, uid, gid) {
        return private_dir(&preferred, (uid, gid), true);
    }
    let parent = Path::new(FALLBACK_PARENT);
    root_owned_dir(parent)?;
    let key = blake3::hash(data_dir.as_os_str().as_encoded_bytes()).to_hex();
    let fallback = parent.join(&key[..16]);
    // Where earlier versions kept it. Starting afresh beside it would make an empty database
    // whose garbage collection then knows none of the stored bytes: never do that silently.
    let legacy = PathBuf::from(format!("{FALLBACK_PARENT}-{}", &key[..16]));
    if std::fs::symlink_metadata(&legacy).is_ok() && std::fs::symlink_metadata(&fallback).is_err() {
        return Err(fail(format!(
            "the private PostgreSQL cluster of {} is at {}, where an earlier version kept it; \
             check that it is a directory of the PostgreSQL user's alone (not a link, mode \
             0700), then move it: `mv {} {}`, and start again",
            data_dir.display(),
            legacy.display(),
            legacy.display(),
            fallback.display()
        )));
    }
    tracing::warn!(
        data_dir = %data_dir.display(), cluster = %fallback.display(),
        "the PostgreSQL user cannot reach the data directory; keeping the cluster elsewhere"
    );
    private_dir(&fallback, (uid, gid), false)
}

/// Makes `dir` (mode 0755, owned by root) unless it exists; refuses it unless it is a real
/// directory owned by root that no one else may write to.
pub(super) fn root_owned_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(format!("cannot create {}: {e}", dir.display()))),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| fail(format!("cannot inspect {}: {e}", dir.display())))?;
    if !meta.file_type().is_dir() || meta.uid() != 0 || meta.permissions().mode() & 0o022 != 0 {
        return Err(fail(format!(
            "{} must be a directory owned by root that only root may write to \
             (found owner {}, mode {:o}); remove it, or set ARTIFACTSTORE_DATABASE_URL",
            dir.display(),
            meta.uid(),
            meta.permissions().mode() & 0o7777
        )));
    }
    Ok(())
}

/// Makes `dir` with mode 0700, owned by `owner`, unless it exists; refuses one that is a
/// symlink or not a directory, owned by anyone else, or open to others. With `tighten`, an
/// existing directory of the right owner whose mode is looser is narrowed to 0700 instead of
/// refused (a data directory of the operator's own, made by an earlier version).
pub(super) fn private_dir(dir: &Path, owner: (Uid, Gid), tighten: bool) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let (uid, gid) = owner;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            nix::unistd::chown(dir, Some(uid), Some(gid))
                .map_err(|e| fail(format!("cannot chown {}: {e}", dir.display())))?;
            // The mode given at creation is narrowed by the umask, never widened.
            return Ok(dir.to_path_buf());
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(format!("cannot create {}: {e}", dir.display()))),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| fail(format!("cannot inspect {}: {e}", dir.display())))?;
    let refuse = |why: String| {
        Err(fail(format!(
            "refusing to use {} for the private PostgreSQL cluster: {why}; remove it, or set \
             ARTIFACTSTORE_DATABASE_URL",
            dir.display()
        )))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.file_type().is_dir() {
        return refuse("it is not a directory".into());
    }
    if meta.uid() != uid.as_raw() {
        return refuse(format!(
            "it is owned by uid {}, not by uid {}",
            meta.uid(),
            uid.as_raw()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        if !tighten {
            return refuse(format!(
                "its mode {mode:o} lets others in (0700 is required)"
            ));
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("cannot restrict {}: {e}", dir.display())))?;
    }
    Ok(dir.to_path_buf())
}

pub(super) fn can_traverse(path: &Path, uid: Uid, gid: Gid) -> bool {
    path.ancestors().all(|dir| {
        let Ok(meta) = std::fs::metadata(dir) else {
            return false;
        };
        let mode = meta.permissions().mode();
        if meta.uid() == uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    })
}

pub(super) fn read_or_create_password(dir: &Path) -> Result<String> {
    let path = dir.join("password");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().to_owned());
    }
    use rand::Rng as _;
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    write_secret(&path, &password)?;
    Ok(password)
}

/// Writes a new file readable by its owner alone from the moment it exists (never a file, or
/// a symlink, someone put there first).
pub(super) fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

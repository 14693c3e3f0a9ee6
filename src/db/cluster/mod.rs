//! A private PostgreSQL cluster under the data directory, for when no database URL is given.
//!
//! Started (or reused, if another process of ours already runs it) with the server binaries
//! found on `PATH` or under `/usr/lib/postgresql/*/bin`, listening on 127.0.0.1 only, with a
//! generated password. PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` system user (or `nobody`).

mod binaries;
mod place;

pub use binaries::find_server_binaries;
#[cfg(test)]
use binaries::find_server_binaries_in;
use place::{cluster_dir, read_or_create_password, unprivileged_user, write_secret};
#[cfg(test)]
use place::{private_dir, root_owned_dir};

use crate::error::{Error, Result};
use nix::unistd::{Gid, Uid};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The data directory: the cluster lives in `<dir>/postgres/` (`pgdata/`, `password`,
    /// `postgres.log`) unless `cluster_dir` says otherwise.
    pub dir: PathBuf,
    /// Where the cluster lives instead (say on another filesystem than the blobs and the
    /// upload spools, so that filling those cannot stop the database).
    pub cluster_dir: Option<PathBuf>,
    /// Turn off fsync and full-page writes: for throwaway test clusters only.
    pub unsafe_fast: bool,
}

/// A running private cluster.
#[derive(Debug)]
pub struct ManagedCluster {
    dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(Uid, Gid)>,
    started_here: bool,
    /// Whether this process is listed among the cluster's users (see [`ManagedCluster::stop`]).
    registered: bool,
}

/// Under the cluster directory: one empty file per process using the cluster, named by pid.
const USERS: &str = "users";
/// Under the cluster directory: present when the process that started the cluster left it
/// running for others, so the last user stops it.
const HANDED_OVER: &str = "handed-over";

/// The database our service uses inside a managed cluster.
pub const DATABASE: &str = "artifactstore";
const SUPERUSER: &str = "artifactstore";

impl ManagedCluster {
    /// Starts the cluster, or attaches to it if it is already running. Blocking work runs off
    /// the async threads.
    pub async fn start_or_reuse(options: ClusterOptions) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::start_blocking(&options))
            .await
            .map_err(|e| Error::Database(format!("starting PostgreSQL: {e}")))?
    }

    fn start_blocking(options: &ClusterOptions) -> Result<Self> {
        let bin_dir = find_server_binaries()?;
        let run_as = unprivileged_user()?;
        let dir = cluster_dir(&options.dir, options.cluster_dir.as_deref(), run_as)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        // One process at a time initialises or starts the cluster.
        let lock_file = std::fs::File::create(dir.join("cluster.lock"))
            .map_err(|e| fail(format!("cannot create lock file in {}: {e}", dir.display())))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| fail(format!("cannot lock {}: {e}", dir.display())))?;

        let pgdata = dir.join("pgdata");
        let password = read_or_create_password(&dir)?;
        if !pgdata.join("PG_VERSION").exists() {
            init_cluster(
                &bin_dir,
                &dir,
                &pgdata,
                &password,
                run_as,
                options.unsafe_fast,
            )?;
        }
        let mut cluster = ManagedCluster {
            dir,
            bin_dir,
            port: 0,
            password,
            run_as,
            started_here: false,
            registered: false,
        };
        cluster.register_user()?;
        if let Some(port) = cluster.running_port() {
            tracing::info!(port, dir = %cluster.dir.display(), "reusing running private PostgreSQL");
            cluster.port = port;
        } else {
            cluster.port = free_port()?;
            cluster.start_server()?;
            cluster.started_here = true;
            // A marker left by an owner that died is not ours to honour: we own this start.
            let _ = std::fs::remove_file(cluster.dir.join(HANDED_OVER));
            tracing::info!(port = cluster.port, dir = %cluster.dir.display(), "started private PostgreSQL");
        }
        Ok(cluster)
    }

    /// The cluster under `data_dir`, without starting it (for status and stop).
    fn locate(data_dir: &Path, cluster: Option<&Path>) -> Result<Self> {
        let bin_dir = find_server_binaries()?;
        let run_as = unprivileged_user()?;
        let dir = cluster_dir(data_dir, cluster, run_as)?;
        Ok(ManagedCluster {
            dir,
            bin_dir,
            port: 0,
            password: String::new(),
            run_as,
            started_here: false,
            registered: false,
        })
    }

    /// Stops a private cluster under `data_dir` that some process left running. Returns
    /// whether one was running.
    pub fn stop_existing(data_dir: &Path, cluster_dir: Option<&Path>) -> Result<bool> {
        let cluster = Self::locate(data_dir, cluster_dir)?;
        if cluster.running_port().is_none() {
            return Ok(false);
        }
        let _lock = cluster.lock()?;
        let _ = std::fs::remove_file(cluster.dir.join(HANDED_OVER));
        cluster.pg_stop();
        Ok(true)
    }

    /// The port of the private cluster under `data_dir`, if it is running.
    pub fn running(data_dir: &Path, cluster_dir: Option<&Path>) -> Result<Option<u16>> {
        Ok(Self::locate(data_dir, cluster_dir)?.running_port())
    }

    /// The URL of `database` on the private cluster of `data_dir`, if it is running (for
    /// `pg_dump`, `pg_restore` and `psql`: see the backup section of docs/OPERATOR.md).
    pub fn running_url(
        data_dir: &Path,
        cluster_dir: Option<&Path>,
        database: &str,
    ) -> Result<Option<String>> {
        let mut cluster = Self::locate(data_dir, cluster_dir)?;
        let Some(port) = cluster.running_port() else {
            return Ok(None);
        };
        let path = cluster.dir.join("password");
        let password = std::fs::read_to_string(&path)
            .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
        cluster.port = port;
        cluster.password = password.trim().to_owned();
        Ok(Some(cluster.url(database)))
    }

    /// A connection URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this process started the server (and so stops it).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Creates `database` if it does not exist.
    pub async fn ensure_database(&self, database: &str) -> Result<()> {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        let task = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .await?
            .is_some();
        if !exists {
            let sql = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
            if let Err(e) = client.batch_execute(&sql).await {
                // Another process may have created it in the meantime.
                if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                    return Err(e.into());
                }
            }
        }
        drop(client);
        let _ = task.await;
        Ok(())
    }

    /// Leaves the cluster. The process that started it stops it, unless other processes (a
    /// `worker` beside a `serve`, say) still use it: then the last of them to leave stops it.
    /// A cluster whose starter never left (killed, or a test harness that leaves it running on
    /// purpose) is not stopped by the others; `postgres stop` stops it.
    pub fn stop(&mut self) {
        let started_here = std::mem::take(&mut self.started_here);
        if !std::mem::take(&mut self.registered) && !started_here {
            return;
        }
        let handed_over = self.dir.join(HANDED_OVER);
        let _lock = match self.lock() {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(error = %e, "cannot lock the private cluster to leave it");
                return;
            }
        };
        let others = self.leave_users();
        if !started_here && !handed_over.exists() {
            return;
        }
        if others > 0 {
            if started_here && let Err(e) = std::fs::write(&handed_over, b"") {
                tracing::warn!(error = %e, "cannot hand the private cluster over");
            }
            tracing::info!(
                others,
                "leaving private PostgreSQL running for the other processes using it"
            );
            return;
        }
        let _ = std::fs::remove_file(&handed_over);
        self.pg_stop();
    }

    /// Stops the PostgreSQL server now, whoever else uses it, keeping this handle:
    /// [`resume`](Self::resume) starts it again on the same port. For outage drills.
    pub fn halt(&self) {
        self.pg_stop();
    }

    /// Starts the server again after [`halt`](Self::halt), on the same port.
    pub fn resume(&self) -> Result<()> {
        self.start_server()
    }

    fn pg_stop(&self) {
        let status = self
            .pg_command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(self.dir.join("pgdata"))
            .output();
        match status {
            Ok(out) if out.status.success() => tracing::info!("stopped private PostgreSQL"),
            Ok(out) => {
                tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr), "pg_ctl stop failed")
            }
            Err(e) => tracing::warn!(error = %e, "pg_ctl stop failed"),
        }
    }

    /// One process at a time initialises, starts, joins or leaves the cluster.
    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let lock_file = std::fs::File::create(self.dir.join("cluster.lock")).map_err(|e| {
            fail(format!(
                "cannot create lock file in {}: {e}",
                self.dir.display()
            ))
        })?;
        nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| fail(format!("cannot lock {}: {e}", self.dir.display())))
    }

    /// Lists this process among the cluster's users (caller holds the lock).
    fn register_user(&mut self) -> Result<()> {
        let users = self.dir.join(USERS);
        std::fs::create_dir_all(&users)
            .and_then(|()| std::fs::write(users.join(std::process::id().to_string()), b""))
            .map_err(|e| fail(format!("cannot register in {}: {e}", users.display())))?;
        self.registered = true;
        Ok(())
    }

    /// Removes this process from the users (and any that died without leaving); returns how
    /// many remain (caller holds the lock).
    fn leave_users(&self) -> usize {
        let users = self.dir.join(USERS);
        let me = std::process::id().to_string();
        let _ = std::fs::remove_file(users.join(&me));
        let Ok(entries) = std::fs::read_dir(&users) else {
            return 0;
        };
        let mut alive = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.parse::<i32>().ok());
            let running = pid.is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    .map_or_else(|e| e != nix::errno::Errno::ESRCH, |()| true)
            });
            if running {
                alive += 1;
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        alive
    }

    fn pg_command(&self, program: &str) -> Command {
        pg_command(&self.bin_dir, program, self.run_as, &self.dir)
    }

    /// The port of a server already running on this cluster, if any.
    fn running_port(&self) -> Option<u16> {
        let pgdata = self.dir.join("pgdata");
        let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
        let status = self
            .pg_command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&pgdata)
            .output()
            .ok()?;
        if !status.status.success() {
            return None;
        }
        // postmaster.pid line 4 is the port.
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn start_server(&self) -> Result<()> {
        let pgdata = self.dir.join("pgdata");
        let out = self
            .pg_command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&pgdata)
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .output()
            .map_err(|e| fail(format!("cannot run pg_ctl: {e}")))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(10).collect();
            return Err(fail(format!(
                "pg_ctl start failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        Ok(())
    }
}

impl Drop for ManagedCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fail(message: String) -> Error {
    Error::Database(format!("private PostgreSQL: {message}"))
}

fn pg_command(bin_dir: &Path, program: &str, run_as: Option<(Uid, Gid)>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin_dir.join(program));
    cmd.current_dir(cwd)
        .env_remove("PGDATA")
        .env("LC_ALL", "C.UTF-8");
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    cmd
}

fn init_cluster(
    bin_dir: &Path,
    dir: &Path,
    pgdata: &Path,
    password: &str,
    run_as: Option<(Uid, Gid)>,
    unsafe_fast: bool,
) -> Result<()> {
    // A half-made pgdata from an interrupted initdb would make initdb refuse: start over.
    if pgdata.exists() {
        std::fs::remove_dir_all(pgdata)
            .map_err(|e| fail(format!("cannot clear {}: {e}", pgdata.display())))?;
    }
    let pwfile = dir.join(".initdb-password");
    // Left over by an initdb that was interrupted: it is ours (the directory is), replace it.
    let _ = std::fs::remove_file(&pwfile);
    write_secret(&pwfile, password)?;
    if let Some((uid, gid)) = run_as {
        nix::unistd::chown(&pwfile, Some(uid), Some(gid))
            .map_err(|e| fail(format!("chown: {e}")))?;
    }
    let mut cmd = pg_command(bin_dir, "initdb", run_as, dir);
    cmd.arg("-D")
        .arg(pgdata)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    if unsafe_fast {
        cmd.arg("--no-sync");
    }
    let out = cmd
        .output()
        .map_err(|e| fail(format!("cannot run initdb: {e}")))?;
    let _ = std::fs::remove_file(&pwfile);
    if !out.status.success() {
        return Err(fail(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut settings = String::from(
        "\n# artifactstore private cluster\nlisten_addresses = '127.0.0.1'\n\
         unix_socket_directories = ''\nmax_connections = 300\n",
    );
    if unsafe_fast {
        settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
    }
    let conf = pgdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)
        .map_err(|e| fail(format!("reading postgresql.conf: {e}")))?;
    text.push_str(&settings);
    std::fs::write(&conf, text).map_err(|e| fail(format!("writing postgresql.conf: {e}")))?;
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| fail(format!("cannot find a free port: {e}")))?;
    Ok(listener
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_binaries_say_how_to_fix_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_server_binaries_in(Some(empty.path().as_os_str()), empty.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install postgresql"), "{err}");
        assert!(err.contains("ARTIFACTSTORE_DATABASE_URL"), "{err}");
    }

    #[test]
    fn cluster_directories_are_private_and_never_adopted_from_others() {
        let root = tempfile::tempdir().unwrap();
        let me = (nix::unistd::geteuid(), nix::unistd::getegid());
        // Made fresh: a directory of mode 0700.
        let fresh = root.path().join("fresh");
        private_dir(&fresh, me, false).unwrap();
        let meta = std::fs::symlink_metadata(&fresh).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        // A symlink to a directory of ours, a plain file, a loose mode: refused.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let err = private_dir(&link, me, true).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(private_dir(&file, me, true).is_err());
        let loose = root.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&loose, me, false).unwrap_err().to_string();
        assert!(err.contains("mode 777"), "{err}");
        // A data directory of the operator's own is narrowed instead.
        private_dir(&loose, me, true).unwrap();
        let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Someone else's: refused (needs root to make one).
        if me.0.is_root() {
            let theirs = root.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            nix::unistd::chown(&theirs, Some(Uid::from_raw(4242)), None).unwrap();
            let err = private_dir(&theirs, me, true).unwrap_err().to_string();
            assert!(err.contains("owned by uid 4242"), "{err}");
            // A fallback parent anyone may write to is refused too.
            let open = root.path().join("open-parent");
            std::fs::create_dir(&open).unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
            assert!(root_owned_dir(&open).is_err());
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
            root_owned_dir(&open).unwrap();
        }
    }

    #[test]
    fn secrets_are_private_from_the_start_and_never_written_through_a_planted_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        let password = read_or_create_password(dir.path()).unwrap();
        assert_eq!(password.len(), 32);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_or_create_password(dir.path()).unwrap(), password);
        // A planted symlink is not followed.
        let target = dir.path().join("elsewhere");
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(write_secret(&planted, "x").is_err());
        assert!(!target.exists());
    }

    #[test]
    fn newest_version_wins() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9", "15", "13"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for p in ["initdb", "pg_ctl", "postgres"] {
                std::fs::write(bin.join(p), "").unwrap();
            }
        }
        let found = find_server_binaries_in(None, root.path()).unwrap();
        assert_eq!(found, root.path().join("15").join("bin"));
    }
}

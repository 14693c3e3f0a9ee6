//! The private PostgreSQL cluster, as a normal user and as root with a data directory the
//! server's user cannot reach. (The root path itself runs in every test: the shared test
//! cluster is started this way when the suite runs as root.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A copy of the binary that any user can execute (the build tree may be under a private home).
fn public_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let bin = dir.join("artifactstore");
    std::fs::copy(env!("CARGO_BIN_EXE_artifactstore"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn migrate_starts_and_stops_a_private_cluster_as_a_normal_user() {
    if !is_root() {
        // We are a normal user already: the same code path runs without switching users.
        let data = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(["migrate", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let base = tempfile::Builder::new()
        .prefix("as-nobody")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = public_binary(base.path());
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    nix::unistd::chown(&data, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .env("ARTIFACTSTORE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .count();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("applied {migrations} migration(s)")),
        "{stdout}"
    );
    let pgdata = data.join("postgres/pgdata");
    assert!(pgdata.join("PG_VERSION").exists());
    // The process that started the cluster stopped it on exit.
    assert!(
        !pgdata.join("postmaster.pid").exists(),
        "cluster left running"
    );
}

#[test]
fn as_root_an_unreachable_data_dir_gets_a_reachable_cluster_dir() {
    if !is_root() {
        return; // only meaningful as root
    }
    let base = tempfile::tempdir().unwrap();
    // A private parent, like /root: the postgres user cannot traverse it.
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = base.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .env("ARTIFACTSTORE_LOG", "warn")
        .env("ARTIFACTSTORE_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("keeping the cluster elsewhere"), "{stderr}");
    let fallback = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cluster="))
        .expect("the warning names the cluster directory")
        .to_owned();
    assert!(
        fallback.starts_with("/var/tmp/artifactstore-postgres/"),
        "{fallback}"
    );
    // Private to the server's user, under a parent only root may write to.
    let meta = std::fs::symlink_metadata(&fallback).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_ne!(meta.uid(), 0, "owned by the server's user");
    let parent = std::fs::symlink_metadata("/var/tmp/artifactstore-postgres").unwrap();
    assert_eq!(parent.uid(), 0);
    assert_eq!(parent.permissions().mode() & 0o022, 0);
    let password = std::fs::metadata(format!("{fallback}/password")).unwrap();
    assert_eq!(password.permissions().mode() & 0o777, 0o600);
    // Stop is idempotent and finds the same place.
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["postgres", "status", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "not running");
    std::fs::remove_dir_all(&fallback).unwrap();
}

/// `serve` starts the private cluster and a `worker` joins it: when `serve` stops first, the
/// cluster stays up for the worker, which stops it when it leaves last.
#[test]
fn the_last_process_using_the_private_cluster_stops_it() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    let data = tempfile::tempdir().unwrap();
    let pgdata = || {
        // As root the cluster may live elsewhere; `postgres status` knows where.
        let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(["postgres", "status", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let terminate = |child: &mut std::process::Child| {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
    };
    let mut serve = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("ARTIFACTSTORE_LOG", "warn")
        .env_remove("ARTIFACTSTORE_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(serve.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on "), "{line}");
    assert_ne!(pgdata(), "not running");
    // `postgres url` gives what pg_dump needs (docs/OPERATOR.md, "Backup and restore").
    let url = |data: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(["postgres", "url", "--data-dir"])
            .arg(data)
            .output()
            .unwrap()
    };
    let out = url(data.path());
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let events: i64 = runtime.block_on(async {
        let client = artifactstore::db::connect(printed.trim()).await.unwrap();
        client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert!(events >= 0);
    let mut worker = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["worker", "--data-dir"])
        .arg(data.path())
        .env("ARTIFACTSTORE_LOG", "info")
        .env_remove("ARTIFACTSTORE_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The worker has joined once it says it runs.
    let mut log = std::io::BufReader::new(worker.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "worker ended: {seen}"
        );
        seen.push_str(&line);
        if line.contains("reusing running private PostgreSQL") {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
    terminate(&mut serve);
    assert_ne!(pgdata(), "not running", "stopped under the worker");
    terminate(&mut worker);
    assert_eq!(pgdata(), "not running", "left running after the last user");
    let out = url(data.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn a_cluster_where_an_earlier_version_kept_it_is_never_replaced_by_an_empty_one() {
    if !is_root() {
        return; // only meaningful as root
    }
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let key = blake3::hash(data.canonicalize().unwrap().as_os_str().as_encoded_bytes()).to_hex();
    let legacy =
        std::path::PathBuf::from(format!("/var/tmp/artifactstore-postgres-{}", &key[..16]));
    std::fs::create_dir_all(legacy.join("pgdata")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .env("ARTIFACTSTORE_LOG", "warn")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&legacy).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mv /var/tmp/artifactstore-postgres-"),
        "{stderr}"
    );
    let new_place = format!("/var/tmp/artifactstore-postgres/{}", &key[..16]);
    assert!(
        !std::path::Path::new(&new_place).exists(),
        "no empty cluster was made"
    );
}

#[test]
fn the_private_cluster_can_live_on_a_filesystem_of_its_own() {
    let base = tempfile::Builder::new()
        .prefix("own-pg")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = base.path().join("data");
    let elsewhere = base.path().join("db-disk/cluster");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env("ARTIFACTSTORE_POSTGRES_DIR", &elsewhere)
            .env("ARTIFACTSTORE_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elsewhere.join("pgdata/PG_VERSION").exists());
    assert!(
        !data.join("postgres").exists(),
        "nothing of it under the data directory"
    );
    let meta = std::fs::metadata(&elsewhere).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let out = run(&["postgres", "status"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "not running");

    // A relative path is where the server starts; one that exists open to others is refused
    // and left as it was (it may be a directory used for more than this), never narrowed.
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The PostgreSQL user's own (as the cluster made above is), so only its mode is wrong.
    std::os::unix::fs::chown(&shared, Some(meta.uid()), Some(meta.gid())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["migrate", "--data-dir", "data"])
        .current_dir(base.path())
        .env("ARTIFACTSTORE_POSTGRES_DIR", "shared")
        .env("ARTIFACTSTORE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}", shared.display())) && stderr.contains("lets others in"),
        "{stderr}"
    );
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
}

//! The client CLI against the real server: push, pull, ls, manifest, a package's lifecycle,
//! events, exit codes.

use crate::support::Server;
use crate::support::{TestDb, random_bytes};
use std::path::Path;
use std::process::{Command, Output};

const TOKENS: &str = "acme:read+write:cli-writer-token,acme:read:cli-reader-token";

fn cli(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(args)
        .env("ARTIFACTSTORE_URL", &server.base)
        .env("ARTIFACTSTORE_TOKEN", token)
        .output()
        .unwrap()
}

fn write_tree(root: &Path) {
    for i in 0..40 {
        let dir = root.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.bin")),
            random_bytes(i * 311, i as u64),
        )
        .unwrap();
    }
    std::fs::write(
        root.join("large.bin"),
        random_bytes(3 * 1024 * 1024 + 11, 99),
    )
    .unwrap();
    std::fs::write(root.join("copy-of-f5.bin"), random_bytes(5 * 311, 5)).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    let mut count = 0;
    for entry in std::fs::read_dir(a).unwrap() {
        let entry = entry.unwrap();
        let other = b.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            same_tree(&entry.path(), &other);
        } else {
            assert_eq!(
                std::fs::read(entry.path()).unwrap(),
                std::fs::read(&other).unwrap(),
                "{other:?}"
            );
            count += 1;
        }
    }
    assert_eq!(
        count,
        std::fs::read_dir(b)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
            .count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_ls_manifest_and_exit_codes() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    write_tree(&tree);

    let w = "cli-writer-token";
    let out = cli(
        &server,
        w,
        &[
            "push",
            tree.to_str().unwrap(),
            "--producer",
            "ci",
            "--subject",
            "build 1",
            "--meta",
            "git.sha=abc",
            "--finalize",
            "--session-threshold",
            "1MiB",
            "--chunk-size",
            "1MiB",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    uuid::Uuid::parse_str(&id).expect("push prints the package id");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("42 files") && summary.contains("41 uploaded"),
        "{summary}"
    );

    // A second push of the same tree sends no bytes.
    let out = cli(
        &server,
        w,
        &[
            "push",
            tree.to_str().unwrap(),
            "--producer",
            "ci",
            "--subject",
            "build 2",
        ],
    );
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 uploaded (0 B), 42 already held"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pull verifies and reproduces the tree; pulling again skips what is already right.
    let pulled = work.path().join("pulled");
    let out = cli(
        &server,
        "cli-reader-token",
        &["pull", &id, pulled.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same_tree(&tree, &pulled);
    let out = cli(
        &server,
        "cli-reader-token",
        &["pull", &id, pulled.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 downloaded, 42 already present"));
    // A local file with other bytes is not overwritten without --force.
    std::fs::write(pulled.join("large.bin"), b"local edits").unwrap();
    let out = cli(
        &server,
        "cli-reader-token",
        &["pull", &id, pulled.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = cli(
        &server,
        "cli-reader-token",
        &["pull", &id, pulled.to_str().unwrap(), "--force"],
    );
    assert!(out.status.success());
    same_tree(&tree, &pulled);

    // ls and manifest.
    let out = cli(
        &server,
        "cli-reader-token",
        &["ls", "--meta", "git.sha=abc", "--json"],
    );
    let lines: Vec<_> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains(&id));
    let out = cli(&server, "cli-reader-token", &["manifest", &id, "--json"]);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), 42);
    let out = cli(&server, "cli-reader-token", &["manifest", &id]);
    artifactstore::Manifest::from_cbor(&out.stdout).expect("raw canonical CBOR on stdout");

    // Exit codes: 3 not found, 5 refused, 2 unreachable.
    let missing = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        cli(
            &server,
            w,
            &["pull", &missing, work.path().join("x").to_str().unwrap()]
        )
        .status
        .code(),
        Some(3)
    );
    let refused = cli(&server, "bad-token-xyz", &["ls"]);
    assert_eq!(refused.status.code(), Some(5));
    assert!(
        refused.stdout.is_empty(),
        "no table header before a failure"
    );
    // Values checked here, before any request: exit 2, the allowed values listed.
    let bad = cli(&server, "cli-reader-token", &["ls", "--status", "done"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("open, finalized, expired"));
    let bad = cli(
        &server,
        "cli-reader-token",
        &["manifest", "../usage", "--json"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a package id"));
    assert_eq!(
        cli(
            &server,
            "cli-reader-token",
            &[
                "push",
                tree.to_str().unwrap(),
                "--producer",
                "p",
                "--subject",
                "s"
            ]
        )
        .status
        .code(),
        Some(5)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["ls", "--server", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: cannot reach"));

    // events tail: every event so far, in order, then stop (--once).
    let out = cli(
        &server,
        "cli-reader-token",
        &[
            "events",
            "tail",
            "--once",
            "--since",
            "0",
            "--type",
            "v1.package.",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // Two pushes: two packages created, one finalized.
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains("v1.package.created") && lines[1].contains("v1.package.finalized"));
    let out = cli(
        &server,
        "cli-reader-token",
        &["events", "tail", "--once", "--json", "--since", "1"],
    );
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["sequence"], 2);

    // Bytes corrupted behind the store's back: the server checks the digest as it streams and
    // aborts the download before its last chunk; pull fails and writes nothing in place.
    let blobs = server.data.join("blobs/blake3");
    let large = blake3::hash(&std::fs::read(tree.join("large.bin")).unwrap())
        .to_hex()
        .to_string();
    let stored = blobs.join(&large[0..2]).join(&large[2..4]).join(&large);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let fresh = work.path().join("fresh");
    let out = cli(
        &server,
        "cli-reader-token",
        &["pull", &id, fresh.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("large.bin: download broke off"), "{stderr}");
    assert!(
        !fresh.join("large.bin").exists(),
        "corrupt bytes are never written in place"
    );
}

/// A package's life from the terminal: push into it, show it (open and finalized), get one
/// file, remove one, finalize, hold, withdraw; tail from the head; completions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_lifecycle_from_the_terminal() {
    let db = TestDb::new().await;
    let tokens = "acme:read+write:cli-writer-token,acme:read:cli-reader-token,\
                  acme:admin:cli-admin-token";
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", tokens)]);
    let (w, r, a) = ("cli-writer-token", "cli-reader-token", "cli-admin-token");
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("dir")).unwrap();
    let kept = random_bytes(70_000, 5);
    std::fs::write(tree.join("dir/kept.bin"), &kept).unwrap();
    std::fs::write(tree.join("gone.txt"), b"gone").unwrap();
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };

    // A tailer from the head sees only what comes after it starts.
    let mut tail = crate::support::Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(["events", "tail", "--type", "v1.package."])
            .env("ARTIFACTSTORE_URL", &server.base)
            .env("ARTIFACTSTORE_TOKEN", r)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let out = ok(cli(
        &server,
        w,
        &[
            "push",
            tree.to_str().unwrap(),
            "--producer",
            "ci",
            "--subject",
            "life",
        ],
    ));
    let id = stdout(&out).trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    // push --package: resume or add to the open package; what it holds is skipped, excluded
    // files stay home, other bytes at a held path are refused.
    std::fs::write(tree.join("dir/new.bin"), b"new").unwrap();
    std::fs::write(tree.join("dir/debug.log"), b"noise").unwrap();
    let t = tree.to_str().unwrap();
    let bad = cli(
        &server,
        w,
        &["push", t, "--package", &id, "--media-type", "no-equals"],
    );
    assert_eq!(bad.status.code(), Some(2));
    let out = ok(cli(
        &server,
        w,
        &[
            "push",
            t,
            "--package",
            &id,
            "--exclude",
            "**/*.log",
            "--media-type",
            "**/new.bin=application/x-new",
        ],
    ));
    assert_eq!(stdout(&out).trim(), id);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 files already in the package"));
    std::fs::remove_file(tree.join("dir/new.bin")).unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&ok(cli(&server, r, &["show", &id, "--json"])))).unwrap();
    let paths: Vec<&str> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["relative_path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["dir/kept.bin", "dir/new.bin", "gone.txt"]);
    assert_eq!(listed["files"][1]["media_type"], "application/x-new");
    ok(cli(&server, w, &["rm", &id, "dir/new.bin"]));
    std::fs::write(tree.join("gone.txt"), b"other bytes").unwrap();
    let clash = cli(
        &server,
        w,
        &["push", t, "--package", &id, "--exclude", "*.log"],
    );
    assert_eq!(clash.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&clash.stderr).contains("other bytes at `gone.txt`"));
    std::fs::write(tree.join("gone.txt"), b"gone").unwrap();
    let both = cli(
        &server,
        w,
        &["push", t, "--package", &id, "--producer", "x"],
    );
    assert_eq!(
        both.status.code(),
        Some(2),
        "--package goes without --producer"
    );

    let shown = stdout(&ok(cli(&server, r, &["show", &id])));
    for expected in [
        "status      open",
        "68.36 KiB  application/octet-stream",
        "4 B  text/plain",
        "gone.txt",
    ] {
        assert!(shown.contains(expected), "{expected}: {shown}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&ok(cli(&server, r, &["show", &id, "--json"])))).unwrap();
    assert_eq!(json["file_count"], 2);

    // quota: the tenant's holdings against its limits (none set here).
    let quota = stdout(&ok(cli(&server, r, &["quota"])));
    assert!(quota.contains("tenant           acme"), "{quota}");
    assert!(quota.contains("packages         1 of no limit"), "{quota}");
    let usage: serde_json::Value =
        serde_json::from_str(&stdout(&ok(cli(&server, r, &["quota", "--json"])))).unwrap();
    assert_eq!(usage["quota"]["used"]["bytes"], 70_004);

    // get: by path, verified, under its name by default.
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["get", &id, "dir/kept.bin"])
        .env("ARTIFACTSTORE_URL", &server.base)
        .env("ARTIFACTSTORE_TOKEN", r)
        .current_dir(work.path())
        .output()
        .unwrap();
    let out = ok(out);
    drop(out);
    assert_eq!(std::fs::read(work.path().join("kept.bin")).unwrap(), kept);
    let missing = cli(&server, r, &["get", &id, "nope.bin"]);
    assert_eq!(missing.status.code(), Some(3));

    // rm one file, then finalize; the reader may do neither.
    assert_eq!(
        cli(&server, r, &["rm", &id, "gone.txt"]).status.code(),
        Some(5)
    );
    ok(cli(&server, w, &["rm", &id, "gone.txt"]));
    let finalized = stdout(&ok(cli(&server, w, &["finalize", &id])));
    assert!(finalized.contains("status      finalized"), "{finalized}");
    assert!(finalized.contains("files       1"), "{finalized}");

    // hold (admin) blocks withdrawal; unhold, then withdraw with a reason.
    ok(cli(&server, a, &["hold", &id, "--reason", "audit"]));
    let unconfirmed = cli(&server, a, &["rm", &id]);
    assert_eq!(
        unconfirmed.status.code(),
        Some(2),
        "a whole package takes --yes"
    );
    let held = cli(&server, a, &["rm", &id, "--yes", "--reason", "recalled"]);
    assert_eq!(held.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&held.stderr).contains("legal hold"));
    ok(cli(&server, a, &["unhold", &id]));
    assert_eq!(
        cli(&server, w, &["rm", &id, "--yes"]).status.code(),
        Some(5),
        "withdrawing takes an admin"
    );
    let withdrawn = stdout(&ok(cli(
        &server,
        a,
        &["rm", &id, "-y", "--reason", "recalled"],
    )));
    assert!(withdrawn.contains("status      withdrawn"), "{withdrawn}");
    assert!(withdrawn.contains("recalled"), "{withdrawn}");
    let gone = cli(&server, r, &["show", &id]);
    assert_eq!(gone.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("withdrawn"));

    // Ids are checked before anything is sent; completions print a script.
    let bad = cli(&server, r, &["show", "not-an-id"]);
    assert_eq!(bad.status.code(), Some(2));
    let script = stdout(&ok(cli(&server, r, &["completions", "bash"])));
    assert!(script.contains("artifactstore") && script.contains("complete"));
    // A reader that goes away (`| head -1`, long before the ~90 KB script ends) ends the
    // output quietly: no panic, nothing on stderr.
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' completions zsh | head -1 >/dev/null",
            env!("CARGO_BIN_EXE_artifactstore")
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&piped.stderr).is_empty(),
        "{piped:?}"
    );

    // The tailer saw the package's life, and nothing from before it started.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    tail.0.kill().unwrap();
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut tail.0.stdout.take().unwrap(), &mut printed).unwrap();
    let lines: Vec<String> = printed.lines().map(str::to_owned).collect();
    let types: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "v1.package.created",
            "v1.package.finalized",
            "v1.package.withdrawn"
        ],
        "{lines:?}"
    );
    assert!(lines[0].ends_with(&id), "{lines:?}");
}

/// Runs the CLI with stderr on a terminal (a pseudo-terminal of 120x40, `TERM=xterm`) and
/// stdout piped, as a person at a terminal piping the output on would: the exit status,
/// stdout, and everything the terminal received.
fn on_terminal(
    server: &Server,
    token: &str,
    args: &[impl AsRef<std::ffi::OsStr>],
) -> (Output, String) {
    use std::io::Read;
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(args)
        .env("ARTIFACTSTORE_URL", &server.base)
        .env("ARTIFACTSTORE_TOKEN", token)
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    // The child holds the terminal's only other end: reading stops (EIO) once it exits.
    let mut master = std::fs::File::from(pty.master);
    let screen = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            seen.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let out = child.wait_with_output().unwrap();
    (out, screen.join().unwrap())
}

/// On a terminal, `push` and `pull` draw their progress (what they do, a bar, bytes of the
/// total) and clear it when done; the package id still goes to stdout alone. `--no-progress`
/// draws nothing, and neither does a run whose stderr is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_drawn_on_a_terminal_only() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big.bin"), random_bytes(24 << 20, 7)).unwrap();
    let tree = tree.to_str().unwrap().to_owned();
    let token = "cli-writer-token";
    let push = |extra: &[&'static str]| -> Vec<String> {
        let args = [
            "push",
            &tree,
            "--producer",
            "ci",
            "--subject",
            "tty",
            "--finalize",
        ];
        args.iter().chain(extra).map(|a| a.to_string()).collect()
    };
    let (out, screen) = tokio::task::block_in_place(|| on_terminal(&server, token, &push(&[])));
    assert!(out.status.success(), "{screen}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    uuid::Uuid::parse_str(&id).unwrap_or_else(|_| panic!("stdout: {id:?}"));
    for drawn in ["hashing", "uploading", "[", "MiB", "24.00 MiB", "eta"] {
        assert!(
            screen.contains(drawn),
            "no {drawn:?} on the terminal: {screen:?}"
        );
    }
    // Cleared when done: the last thing drawn erases the bar's line.
    assert!(screen.contains("\x1b[2K"), "{screen:?}");

    let into = dir.path().join("pulled");
    let into = into.to_str().unwrap();
    let (out, screen) =
        tokio::task::block_in_place(|| on_terminal(&server, token, &["pull", &id, into]));
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("pulling") && screen.contains("MiB"),
        "{screen:?}"
    );

    let (out, screen) =
        tokio::task::block_in_place(|| on_terminal(&server, token, &push(&["--no-progress"])));
    assert!(out.status.success(), "{screen}");
    assert!(
        !screen.contains("uploading") && !screen.contains('\x1b'),
        "{screen:?}"
    );
    let piped = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(push(&[]))
        .env("ARTIFACTSTORE_URL", &server.base)
        .env("ARTIFACTSTORE_TOKEN", token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{stderr}");
    assert!(
        !stderr.contains("hashing") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
}

/// A client command's `--help` lists what a client can set: none of the server's settings
/// (listen address, database, storage, log format, traces); the server's commands list them.
/// A client command ignores the server's log settings in its environment.
#[test]
fn client_help_leaves_the_server_settings_out() {
    let run = |args: &[&str], log_format: &str| {
        Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(args)
            .env("ARTIFACTSTORE_LOG_FORMAT", log_format)
            .output()
            .unwrap()
    };
    let help = |args: &[&str]| {
        let out = run(&[args, &["--help"]].concat(), "text");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let server_only = [
        "--log-format",
        "--otlp-endpoint",
        "--listen",
        "--database-url",
        "--data-dir",
    ];
    for command in [
        &["push"][..],
        &["pull"],
        &["ls"],
        &["get"],
        &["show"],
        &["rm"],
        &["events", "tail"],
        &["retention", "set"],
    ] {
        let text = help(command);
        for flag in server_only {
            assert!(
                !text.contains(flag),
                "{command:?} --help lists {flag}:\n{text}"
            );
        }
        assert!(text.contains("--server"), "{command:?}:\n{text}");
    }
    for command in [&["serve"][..], &["worker"], &["migrate"], &["verify"]] {
        let text = help(command);
        for flag in ["--log-format", "--otlp-endpoint", "--data-dir"] {
            assert!(text.contains(flag), "{command:?} --help lacks {flag}");
        }
    }
    let out = run(&["version"], "not-a-format");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(run(&["serve"], "not-a-format").status.code(), Some(2));
}

/// `verify` and `storage migrate` read an existing store: a data directory without one (a
/// typo) is refused, and no empty cluster is made there.
#[test]
fn store_commands_refuse_a_data_directory_without_a_store() {
    let empty = tempfile::tempdir().unwrap();
    let data = empty.path().join("typo");
    for args in [
        vec!["verify"],
        vec!["storage", "migrate", "--from", "local", "--to", "s3"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(&args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("ARTIFACTSTORE_DATABASE_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("holds no artifact store"), "{stderr}");
        assert!(!data.join("postgres").exists(), "{args:?} made a cluster");
    }
}

/// A `--server` that is some other HTTP server: the error says so, instead of quoting a page.
#[test]
fn a_server_that_is_not_an_artifactstore_is_named_as_such() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let answer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let body = "<html><body>Not Found</body></html>";
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["ls", "--server", &format!("http://{address}")])
        .output()
        .unwrap();
    answer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("an artifactstore server?"), "{stderr}");
    assert!(out.stdout.is_empty(), "no table header before a failure");
}

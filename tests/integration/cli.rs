//! The client CLI against the real server: push, pull, ls, manifest, exit codes.

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
        String::from_utf8_lossy(&out.stderr).contains("0 uploaded (0 bytes), 42 already held"),
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
        &["events", "tail", "--once", "--type", "v1.package."],
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

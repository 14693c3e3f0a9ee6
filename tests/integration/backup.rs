//! The backup and restore drill of docs/OPERATOR.md, as written there: the database is dumped
//! first (`pg_dump`), then the blobs are copied, while the server goes on taking writes;
//! everything is lost; the blobs and the database are restored; `replay --check` and `verify`
//! pass, every file recorded before the dump downloads byte for byte, what came after the
//! dump is absent (its bytes are orphans the worker removes), and the log carries on from
//! where the dump left it, gapless.

use crate::support::Server;
use crate::support::{TestDb, download_file, json_of, random_bytes, run, with_database};
use reqwest::{Client, StatusCode};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "backup-admin-token";
const TOKENS: &str = "backup:read+write+admin:backup-admin-token";

/// A PostgreSQL client program (`pg_dump`, `pg_restore`) of the newest installed version.
fn pg_tool(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// A URL's password, and the URL without it.
fn without_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (credentials, place) = rest.split_once('@').unwrap();
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    (password.to_owned(), format!("{scheme}://{user}@{place}"))
}

fn succeed(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    succeed(Command::new("cp").arg("-a").arg(from).arg(to));
}

struct Api {
    http: Client,
    base: String,
}

impl Api {
    async fn package(&self, files: &[(&str, Vec<u8>)], finalize: bool) -> (String, Vec<String>) {
        let resp = self
            .http
            .post(format!("{}/packages", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"producer": "ci", "subject": "drill"}))
            .send()
            .await
            .unwrap();
        let package = json_of(resp, StatusCode::CREATED).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut ids = Vec::new();
        for (path, data) in files {
            let resp = self
                .http
                .put(format!("{}/packages/{package}/files/{path}", self.base))
                .bearer_auth(TOKEN)
                .body(data.clone())
                .send()
                .await
                .unwrap();
            ids.push(
                json_of(resp, StatusCode::CREATED).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        if finalize {
            let resp = self
                .http
                .post(format!("{}/packages/{package}/finalize", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            json_of(resp, StatusCode::OK).await;
        }
        (package, ids)
    }

    async fn status(&self, path: &str) -> StatusCode {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn sequences(&self) -> Vec<i64> {
        let resp = self
            .http
            .get(format!("{}/events?since=0&limit=1000&wait=0", self.base))
            .bearer_auth(TOKEN)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        json_of(resp, StatusCode::OK).await["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sequence"].as_i64().unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_to_a_consistent_store() {
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let env = [("ARTIFACTSTORE_TOKENS", TOKENS)];
    let server = Server::start_in(&db.url, data.path(), &env);
    let api = Api {
        http: Client::new(),
        base: server.base.clone(),
    };

    // Before the backup: a finalized package, an open one, and bytes shared between them.
    let shared = random_bytes(300_000, 1);
    let small = random_bytes(4096, 2);
    let large = random_bytes(3 << 20, 3);
    let (finalized, finalized_files) = api
        .package(
            &[
                ("a/shared.bin", shared.clone()),
                ("a/small.txt", small.clone()),
            ],
            true,
        )
        .await;
    let (open, open_files) = api
        .package(
            &[
                ("b/large.bin", large.clone()),
                ("b/shared.bin", shared.clone()),
            ],
            false,
        )
        .await;
    let before = api.sequences().await;

    // 1. The database, while the server runs; the password in the tools' environment, never
    // on their command line (as docs/OPERATOR.md shows).
    let (password, bare_url) = without_password(&db.url);
    let dump = backup.path().join("artifactstore.dump");
    succeed(
        Command::new(pg_tool("pg_dump"))
            .env("PGPASSWORD", &password)
            .args(["--format=custom", "--file"])
            .arg(&dump)
            .arg(&bare_url),
    );
    // Writes go on between the two steps.
    let late = random_bytes(500_000, 4);
    let (after_dump, _) = api.package(&[("late.bin", late.clone())], true).await;
    // 2. Then the blobs.
    copy_dir(&data.path().join("blobs"), &backup.path().join("blobs"));
    assert!(server.terminate().success());

    // The disaster: the database and the blobs are gone.
    let admin = artifactstore::db::connect(&with_database(&db.url, "postgres"))
        .await
        .unwrap();
    for statement in ["DROP DATABASE {} WITH (FORCE)", "CREATE DATABASE {}"] {
        admin
            .batch_execute(&statement.replace("{}", &db.name))
            .await
            .unwrap();
    }
    std::fs::remove_dir_all(data.path().join("blobs")).unwrap();

    // Restore: the blobs, then the database; then check before serving.
    copy_dir(&backup.path().join("blobs"), &data.path().join("blobs"));
    succeed(
        Command::new(pg_tool("pg_restore"))
            .env("PGPASSWORD", &password)
            .args(["--no-owner", "--exit-on-error", "--dbname"])
            .arg(&bare_url)
            .arg(&dump),
    );
    let (code, out) = run(&db.url, data.path(), &["replay", "--check"], &[]);
    assert_eq!(code, 0, "replay --check: {out}");
    let (code, out) = run(&db.url, data.path(), &["verify"], &[]);
    assert_eq!(
        code, 0,
        "verify: every recorded copy present and intact: {out}"
    );

    // The bytes written after the dump are orphans: the worker removes them, nothing else.
    let late_address = blake3::hash(&late).to_hex().to_string();
    let late_blob = data
        .path()
        .join("blobs/blake3")
        .join(&late_address[0..2])
        .join(&late_address[2..4])
        .join(&late_address);
    assert!(late_blob.exists(), "the blob copy holds the late bytes");
    let (code, out) = run(&db.url, data.path(), &["worker", "--once"], &[]);
    assert_eq!(code, 0, "worker --once: {out}");
    assert!(!late_blob.exists(), "orphan bytes are collected: {out}");

    let server = Server::start_in(&db.url, data.path(), &env);
    let api = Api {
        http: Client::new(),
        base: server.base.clone(),
    };
    for (id, expected) in finalized_files.iter().zip([&shared, &small]) {
        assert_eq!(
            &download_file(&api.http, &api.base, TOKEN, id).await,
            expected
        );
    }
    for (id, expected) in open_files.iter().zip([&large, &shared]) {
        assert_eq!(
            &download_file(&api.http, &api.base, TOKEN, id).await,
            expected
        );
    }
    assert_eq!(
        api.status(&format!("/packages/{finalized}/manifest")).await,
        StatusCode::OK
    );
    assert_eq!(
        api.status(&format!("/packages/{after_dump}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.sequences().await, before, "the log is the dump's");

    // The open package takes files again, and the log carries on without a gap.
    let resp = api
        .http
        .put(format!("{}/packages/{open}/files/b/new.bin", api.base))
        .bearer_auth(TOKEN)
        .body(late.clone())
        .send()
        .await
        .unwrap();
    json_of(resp, StatusCode::CREATED).await;
    let sequences = api.sequences().await;
    assert_eq!(sequences.len(), before.len() + 1);
    assert_eq!(&sequences[..before.len()], &before[..]);
    // The whole log (every tenant's events, the operator's `verify` among them) has no gap.
    let client = db.client().await;
    let (count, last): (i64, Option<i64>) = {
        let row = client
            .query_one("SELECT count(*), max(sequence) FROM events", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(Some(count), last, "gapless from 1");
    assert_eq!(sequences.last().copied(), last, "the new event is the last");
    assert!(server.terminate().success());
}

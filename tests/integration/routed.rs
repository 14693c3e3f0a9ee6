//! Several backends through the real server: the default switched by configuration alone,
//! routing rules, verification of damaged copies, and migration between backends. The S3
//! backend is the real server `scripts/test` starts (Ceph RGW).

use crate::s3::s3_settings;
use crate::support::Server;
use crate::support::{TestDb, random_bytes};
use artifactstore::identity::DualHasher;
use artifactstore::storage::BlobStore;
use artifactstore::storage::s3::{S3Settings, S3Store};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A storage file with the local backend and `s3`, defaulting to `default`.
fn storage_file(dir: &Path, s3: &S3Settings, default: &str, routes: &str) -> PathBuf {
    let path = dir.join(format!("storage-{default}.toml"));
    std::fs::write(
        &path,
        format!(
            "default_backend = \"{default}\"\n\
             [backends.s3]\n\
             kind = \"s3\"\n\
             endpoint_url = \"{}\"\n\
             bucket = \"{}\"\n\
             key_prefix = \"{}\"\n\
             access_key_ref = \"env:AWS_ACCESS_KEY_ID\"\n\
             secret_key_ref = \"env:AWS_SECRET_ACCESS_KEY\"\n\
             force_path_style = true\n\
             multipart_threshold_bytes = 6291456\n\
             multipart_chunk_bytes = 5242880\n\
             {routes}\n",
            s3.endpoint_url.as_deref().unwrap(),
            s3.bucket,
            s3.key_prefix
        ),
    )
    .unwrap();
    path
}

struct Stack {
    server: Server,
    http: Client,
}

impl Stack {
    fn start(db: &TestDb, storage: &Path, local_root: &Path) -> Self {
        let server = Server::start(
            db,
            &[
                ("ARTIFACTSTORE_STORAGE_FILE", storage.to_str().unwrap()),
                (
                    "ARTIFACTSTORE_STORAGE_LOCAL_ROOT",
                    local_root.to_str().unwrap(),
                ),
            ],
        );
        Stack {
            server,
            http: Client::new(),
        }
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, self.server.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn package(&self, retention_class: &str) -> String {
        let p = self
            .json(
                reqwest::Method::POST,
                "/packages",
                Some(json!({"producer": "ci", "subject": "s", "retention_class": retention_class})),
            )
            .await;
        p["id"].as_str().unwrap().to_owned()
    }

    async fn put(&self, package: &str, path: &str, data: &[u8]) -> String {
        let resp = self
            .http
            .put(
                self.server
                    .url(&format!("/packages/{package}/files/{path}")),
            )
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{:?}",
            resp.text().await
        );
        resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The whole download, or `None` when the server aborted it.
    async fn download(&self, file: &str) -> Option<Vec<u8>> {
        let resp = self
            .http
            .get(self.server.url(&format!("/files/{file}/download")))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.bytes().await.ok().map(|b| b.to_vec())
    }

    async fn range(&self, file: &str, range: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(self.server.url(&format!("/files/{file}/download")))
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        resp.bytes().await.unwrap().to_vec()
    }
}

async fn backends_of(db: &TestDb, data: &[u8]) -> Vec<(String, String)> {
    let digest = DualHasher::digest(data).blake3;
    db.client()
        .await
        .query(
            "SELECT backend_id, status FROM storage_locations WHERE blake3 = $1 ORDER BY 1",
            &[&digest.0.as_slice()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn cli(db: &TestDb, storage: &Path, local_root: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(args)
        .arg("--quiet")
        .env("ARTIFACTSTORE_DATABASE_URL", &db.url)
        .env("ARTIFACTSTORE_STORAGE_FILE", storage)
        .env("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", local_root)
        .env("ARTIFACTSTORE_LOG", "error")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_passes_on_local_and_on_s3_by_configuration_alone() {
    let Some(s3) = s3_settings() else { return };
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let local_root = dir.path().join("blobs");
    let mut stored = Vec::new();
    for (round, default) in ["s3", "local"].iter().enumerate() {
        let storage = storage_file(dir.path(), &s3, default, "");
        let stack = Stack::start(&db, &storage, &local_root);
        let package = stack.package("standard").await;
        // Small (one PUT), large (multipart), empty.
        let files = [
            random_bytes(100_000, 10 + round as u64),
            random_bytes(13 * 1024 * 1024 + 5, 20 + round as u64),
            Vec::new(),
        ];
        for (i, data) in files.iter().enumerate() {
            let id = stack.put(&package, &format!("dir/f{i}"), data).await;
            stored.push((id, data.clone(), default.to_string()));
        }
        stack
            .json(
                reqwest::Method::POST,
                &format!("/packages/{package}/finalize"),
                None,
            )
            .await;
        // Every file ever stored reads back, wherever it went: reads follow the recorded
        // location, not the current default.
        for (id, data, backend) in &stored {
            assert!(
                stack.download(id).await.as_deref() == Some(data.as_slice()),
                "file on {backend} read back differently"
            );
            // (The empty file is the same blob in both rounds: it is then on both.)
            let held = backends_of(&db, data).await;
            assert!(held.iter().any(|(b, _)| b == backend), "{held:?}");
        }
        let (id, data, _) = &stored[stored.len() - 2];
        assert_eq!(
            stack.range(id, "bytes=6291450-6291460").await,
            &data[6291450..=6291460]
        );
        let health = stack.json(reqwest::Method::GET, "/health", None).await;
        assert_eq!(health["status"], "ok", "{health}");
        assert_eq!(health["backends"].as_array().unwrap().len(), 2);
    }
    // The S3 objects are where the layout says.
    let store = S3Store::open("s3", &s3).unwrap();
    let large = &stored[1].1;
    let address = DualHasher::digest(large).primary_address();
    assert_eq!(
        store.head(&address).await.unwrap(),
        Some(large.len() as u64)
    );
    assert!(
        !local_root.join(address.storage_key()).exists(),
        "the s3 round must not write locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_choose_the_backend_by_retention_class_and_producer() {
    let Some(s3) = s3_settings() else { return };
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_file(
        dir.path(),
        &s3,
        "local",
        "[[routes]]\nretention_class = \"long\"\nbackend = \"s3\"\n\
         [[routes]]\nproducer = \"nightly\"\nbackend = \"s3\"",
    );
    let stack = Stack::start(&db, &storage, &dir.path().join("blobs"));
    let long = stack.package("long").await;
    let standard = stack.package("standard").await;
    let (a, b) = (random_bytes(5000, 1), random_bytes(5000, 2));
    stack.put(&long, "a", &a).await;
    stack.put(&standard, "b", &b).await;
    assert_eq!(
        backends_of(&db, &a).await,
        [("s3".into(), "present".into())]
    );
    assert_eq!(
        backends_of(&db, &b).await,
        [("local".into(), "present".into())]
    );
    let nightly = stack
        .json(
            reqwest::Method::POST,
            "/packages",
            Some(json!({"producer": "nightly", "subject": "x"})),
        )
        .await;
    let c = random_bytes(5000, 3);
    stack.put(nightly["id"].as_str().unwrap(), "c", &c).await;
    assert_eq!(backends_of(&db, &c).await[0].0, "s3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_corrupt_copies_and_downloads_refuse_them() {
    let Some(s3) = s3_settings() else { return };
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let local_root = dir.path().join("blobs");
    let storage = storage_file(
        dir.path(),
        &s3,
        "local",
        "[[routes]]\nretention_class = \"long\"\nbackend = \"s3\"",
    );
    let stack = Stack::start(&db, &storage, &local_root);
    let on_local = stack.package("standard").await;
    let on_s3 = stack.package("long").await;
    let (a, b, c) = (
        random_bytes(3 * 1024 * 1024, 31),
        random_bytes(200_000, 32),
        random_bytes(1000, 33),
    );
    let file_a = stack.put(&on_local, "a", &a).await;
    let file_b = stack.put(&on_s3, "b", &b).await;
    let file_c = stack.put(&on_local, "c", &c).await;

    let (code, out) = cli(&db, &storage, &local_root, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 ok, 0 failed"), "{out}");

    // One byte flipped behind the store's back: in a local file, and in an S3 object.
    let path_a = local_root.join(DualHasher::digest(&a).primary_address().storage_key());
    let mut bytes = std::fs::read(&path_a).unwrap();
    bytes[1_234_567] ^= 0x01;
    std::fs::write(&path_a, bytes).unwrap();
    let store = S3Store::open("s3", &s3).unwrap();
    let mut bad_b = b.clone();
    bad_b[99] ^= 0x80;
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(store.key_of(&DualHasher::digest(&b).primary_address()))
        .body(bad_b.into())
        .send()
        .await
        .unwrap();

    // Before verify notices, a download already refuses the corrupt bytes (checked as they
    // stream), and serves the intact file.
    assert_eq!(
        stack.download(&file_a).await,
        None,
        "corrupt local bytes were served"
    );
    assert_eq!(
        stack.download(&file_b).await,
        None,
        "corrupt S3 bytes were served"
    );
    assert_eq!(stack.download(&file_c).await.as_deref(), Some(c.as_slice()));

    let (code, out) = cli(&db, &storage, &local_root, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 ok, 2 failed, 0 missing"), "{out}");

    let failed = stack
        .json(
            reqwest::Method::GET,
            "/storage/locations?status=failed",
            None,
        )
        .await;
    let mut listed: Vec<(String, String)> = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["backend_id"].as_str().unwrap().to_owned(),
                l["content_address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            (
                "local".to_owned(),
                DualHasher::digest(&a).primary_address().to_string()
            ),
            (
                "s3".to_owned(),
                DualHasher::digest(&b).primary_address().to_string()
            )
        ]
    );
    let health = stack.json(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["storage"]["failed_copies"], 2, "{health}");
    // Downloads of a copy known to be bad are refused outright.
    let resp = stack
        .http
        .get(stack.server.url(&format!("/files/{file_a}/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // The events are in the log, for the reserved `system` tenant only.
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT tenant, count(*) FROM events WHERE type = 'v1.storage.location_verified' \
             GROUP BY tenant",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>(0), "system");
    assert_eq!(rows[0].get::<_, i64>(1), 6);

    // Uploading the same bytes again heals a damaged copy (it is not kept as a dedup hit).
    let healed = stack.package("standard").await;
    let file_a2 = stack.put(&healed, "a", &a).await;
    assert!(stack.download(&file_a2).await.as_deref() == Some(a.as_slice()));
    assert_eq!(
        std::fs::read(&path_a).unwrap(),
        a,
        "the damaged local copy was replaced"
    );
    let (code, out) = cli(
        &db,
        &storage,
        &local_root,
        &["verify", "--backend", "local"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 ok, 0 failed"), "{out}");

    // A missing object is reported as missing; sampling checks a subset.
    std::fs::remove_file(local_root.join(DualHasher::digest(&c).primary_address().storage_key()))
        .unwrap();
    let (code, out) = cli(
        &db,
        &storage,
        &local_root,
        &["verify", "--backend", "local"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 ok, 0 failed, 1 missing"), "{out}");
    let (code, out) = cli(&db, &storage, &local_root, &["verify", "--sample", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--sample"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_verified_copies_and_resumes() {
    let Some(s3) = s3_settings() else { return };
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let local_root = dir.path().join("blobs");
    let storage = storage_file(dir.path(), &s3, "local", "");
    let stack = Stack::start(&db, &storage, &local_root);
    let moved = stack.package("standard").await;
    let stays = stack.package("standard").await;
    let files: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            random_bytes(
                if i == 0 { 7 * 1024 * 1024 } else { 10_000 + i },
                40 + i as u64,
            )
        })
        .collect();
    let mut ids = Vec::new();
    for (i, data) in files.iter().enumerate() {
        ids.push(stack.put(&moved, &format!("f{i}"), data).await);
    }
    let other = random_bytes(4000, 99);
    stack.put(&stays, "other", &other).await;

    // A copy already on the target, as if an earlier run was interrupted after copying.
    let store = S3Store::open("s3", &s3).unwrap();
    let mut staged = store.stage().await.unwrap();
    staged.write(files[1].clone().into()).await.unwrap();
    staged
        .commit(&DualHasher::digest(&files[1]).primary_address())
        .await
        .unwrap();

    let (code, out) = cli(
        &db,
        &storage,
        &local_root,
        &[
            "storage",
            "migrate",
            "--from",
            "local",
            "--to",
            "s3",
            "--package",
            &moved,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("moved 5 blobs") && out.contains("4 copied, 1 already there"),
        "{out}"
    );
    for (data, id) in files.iter().zip(&ids) {
        assert_eq!(
            backends_of(&db, data).await,
            [
                ("local".into(), "deleted".into()),
                ("s3".into(), "present".into())
            ]
        );
        let address = DualHasher::digest(data).primary_address();
        assert!(!local_root.join(address.storage_key()).exists());
        assert!(stack.download(id).await.as_deref() == Some(data.as_slice()));
    }
    // Out of scope: untouched.
    assert_eq!(
        backends_of(&db, &other).await,
        [("local".into(), "present".into())]
    );
    // Running again finds nothing left to do.
    let (code, out) = cli(
        &db,
        &storage,
        &local_root,
        &[
            "storage",
            "migrate",
            "--from",
            "local",
            "--to",
            "s3",
            "--package",
            &moved,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("moved 0 blobs"), "{out}");
    // And back again, everything.
    let (code, out) = cli(
        &db,
        &storage,
        &local_root,
        &["storage", "migrate", "--from", "s3", "--to", "local"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("moved 5 blobs"), "{out}");
    for (data, id) in files.iter().zip(&ids) {
        assert!(stack.download(id).await.as_deref() == Some(data.as_slice()));
        assert_eq!(
            store
                .head(&DualHasher::digest(data).primary_address())
                .await
                .unwrap(),
            None
        );
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    for scope in [
        ["--package", unknown.as_str()],
        ["--retention-class", "no-such-class"],
    ] {
        let mut args = vec!["storage", "migrate", "--from", "local", "--to", "s3"];
        args.extend(scope);
        let (code, out) = cli(&db, &storage, &local_root, &args);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(scope[1]), "{out}");
    }
    let (code, out) = cli(
        &db,
        &storage,
        &local_root,
        &["storage", "migrate", "--from", "s3", "--to", "nowhere"],
    );
    assert_ne!(code, 0);
    assert!(out.contains("nowhere"), "{out}");

    // Replay reproduces the storage views from the log exactly.
    let pool = db.pool(4);
    let check = artifactstore::events::replay(&pool, true).await.unwrap();
    assert_eq!(check.identical, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_answers_503_and_keeps_nothing() {
    let Some(mut s3) = s3_settings() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s3.endpoint_url = Some(format!("http://{}", listener.local_addr().unwrap()));
    drop(listener);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_file(dir.path(), &s3, "s3", "");
    let stack = Stack::start(&db, &storage, &dir.path().join("blobs"));
    let package = stack.package("standard").await;
    for size in [1000, 7 * 1024 * 1024] {
        let resp = stack
            .http
            .put(stack.server.url(&format!("/packages/{package}/files/f")))
            .body(random_bytes(size, 5))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("retry later"),
            "{problem}"
        );
        assert!(
            !problem.to_string().contains("127.0.0.1"),
            "internals leaked: {problem}"
        );
    }
    let p = stack
        .json(reqwest::Method::GET, &format!("/packages/{package}"), None)
        .await;
    assert_eq!(p["file_count"], 0, "{p}");
    let events: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'v1.file.ingested'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
    let resp = stack
        .http
        .get(stack.server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_once_sweeps_abandoned_staging_and_runs_a_scheduled_verification() {
    let Some(s3) = s3_settings() else { return };
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let local_root = dir.path().join("blobs");
    let storage = storage_file(dir.path(), &s3, "local", "");
    let stack = Stack::start(&db, &storage, &local_root);
    let package = stack.package("standard").await;
    let (a, b) = (random_bytes(100_000, 61), random_bytes(100_000, 62));
    stack.put(&package, "a", &a).await;
    stack.put(&package, "b", &b).await;
    drop(stack);
    // An abandoned staged write from an hour ago, and one still in progress.
    let old = local_root.join(".staging/abandoned");
    std::fs::write(&old, b"partial").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    let fresh = local_root.join(".staging/in-progress");
    std::fs::write(&fresh, b"partial").unwrap();
    // Damage one stored copy.
    let path_b = local_root.join(DualHasher::digest(&b).primary_address().storage_key());
    let mut bytes = std::fs::read(&path_b).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path_b, bytes).unwrap();

    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(["worker", "--once", "--staging-grace-seconds", "600"])
            .args(extra)
            .env("ARTIFACTSTORE_DATABASE_URL", &db.url)
            .env("ARTIFACTSTORE_STORAGE_FILE", &storage)
            .env("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", &local_root)
            .env("ARTIFACTSTORE_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("removed 1 abandoned staged writes"), "{out}");
    assert!(!old.exists() && fresh.exists());
    assert!(
        !out.contains("verified"),
        "verification is off by default: {out}"
    );

    let (code, out) = run(&["--verify-every-seconds", "3600", "--verify-sample", "1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("verified 2 copies: 1 ok, 1 failed"), "{out}");
    let failed: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM storage_locations WHERE status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 1);
}

/// Unsigned bodies of known length go up as one streamed PUT: with an announced digest straight
/// to the address, without one to a staging key. Through the real server: a wrong announced
/// digest is a 422 problem and leaves nothing in the bucket; right ones (raw PUT, upload
/// session) and unannounced ones are stored and read back; no staging is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_puts_to_s3_through_the_server_keep_nothing_for_a_wrong_digest() {
    let Some(mut s3) = s3_settings() else { return };
    s3.sign_payload = Some(false);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_file(dir.path(), &s3, "s3", "sign_payload = false\n");
    let stack = Stack::start(&db, &storage, &dir.path().join("blobs"));
    let store = S3Store::open("s3", &s3).unwrap();
    let package = stack.package("standard").await;
    // Above the 6 MiB threshold: the streamed path.
    let data = random_bytes(13 * 1024 * 1024 + 5, 70);
    let address = DualHasher::digest(&data).primary_address();
    let other = DualHasher::digest(&random_bytes(100, 71)).primary_address();

    let resp = stack
        .http
        .put(stack.server.url(&format!(
            "/packages/{package}/files/wrong.bin?expected_digest={other}"
        )))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(store.head(&address).await.unwrap(), None);
    assert_eq!(store.head(&other).await.unwrap(), None);
    crate::s3::assert_no_staging_left(&store, &s3).await;

    let right = stack
        .put(
            &package,
            &format!("right.bin?expected_digest={address}"),
            &data,
        )
        .await;
    // Not announced: staged, then copied to its address.
    let unannounced = random_bytes(data.len(), 72);
    let plain = stack.put(&package, "plain.bin", &unannounced).await;

    // An upload session announcing the digest (of bytes stored already: a dedup): its spooled
    // file is adopted the same way.
    let session = stack
        .json(
            reqwest::Method::POST,
            "/uploads",
            Some(json!({
                "package_id": package,
                "relative_path": "session.bin",
                "size": data.len(),
                "expected_digest": address.to_string(),
            })),
        )
        .await;
    let url = stack.server.url(session["upload_url"].as_str().unwrap());
    let resp = stack
        .http
        .patch(&url)
        .header(
            "Content-Range",
            format!("bytes 0-{}/{}", data.len() - 1, data.len()),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = stack
        .http
        .post(format!("{url}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let session_file = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(store.head(&address).await.unwrap(), Some(data.len() as u64));
    let unannounced_address = DualHasher::digest(&unannounced).primary_address();
    assert_eq!(
        store.head(&unannounced_address).await.unwrap(),
        Some(data.len() as u64)
    );
    for (id, bytes) in [
        (&right, &data),
        (&plain, &unannounced),
        (&session_file, &data),
    ] {
        assert!(stack.download(id).await.as_deref() == Some(bytes.as_slice()));
    }
    crate::s3::assert_no_staging_left(&store, &s3).await;
}

//! Several servers and workers on one database: each process numbers events with its own
//! sequencer and listens with its own LISTEN connection; the log they share is one.

use crate::support::{Server, TestDb, TestEnv};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKENS: &str = "default:read+write:default-token";

async fn events(http: &reqwest::Client, server: &Server, since: i64, wait: u32) -> Vec<Value> {
    let resp = http
        .get(server.url(&format!("/events?since={since}&wait={wait}")))
        .bearer_auth("default-token")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let page: Value = resp.json().await.unwrap();
    page["events"].as_array().unwrap().clone()
}

/// The long-polls a server holds, from its metrics.
async fn long_polls(http: &reqwest::Client, server: &Server) -> f64 {
    let url = server.metrics.clone().unwrap();
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("artifactstore_long_polls"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A package created by an event committed without asking any sequencer for a pass; its id.
async fn unnumbered_package(db: &TestDb) -> String {
    use artifactstore::domain::{Metadata, PackageId, TenantId, Timestamp};
    use artifactstore::events::{self, DomainEvent, PackageCreated};
    let pool = db.pool(1);
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let id = PackageId::generate();
    events::record(
        &tx,
        vec![DomainEvent::new(PackageCreated {
            package_id: id,
            tenant: TenantId::default_tenant(),
            producer: "p".into(),
            subject: "unnumbered".into(),
            retention_class: "short".into(),
            metadata: Metadata::default(),
            created_at: Timestamp::parse("2026-12-06T00:00:00Z").unwrap(),
        })],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id.to_string()
}

/// A long-poll on one replica wakes for a commit made through another; a client that writes
/// through one replica and reads the log through another, at once and without waiting, sees
/// its event; and the three replicas' log is one gapless sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_log_and_wake_each_others_waiters() {
    let db = TestDb::new().await;
    // One local backend: one directory, shared (as a shared filesystem would be).
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().to_str().unwrap();
    let replicas: Vec<Server> = (0..3)
        .map(|_| {
            Server::start(
                &db,
                &[
                    ("ARTIFACTSTORE_TOKENS", TOKENS),
                    ("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", root),
                ],
            )
        })
        .collect();
    let http = reqwest::Client::new();

    for round in 0..3 {
        let (writer, reader) = (&replicas[round % 3], &replicas[(round + 1) % 3]);
        let seen = events(&http, reader, 0, 0).await.len() as i64;
        // A long-poll on the reader, then a write through the writer.
        let waiting = {
            let http = http.clone();
            let url = reader.url(&format!("/events?since={seen}&wait=20"));
            tokio::spawn(async move {
                let started = Instant::now();
                let resp = http
                    .get(url)
                    .bearer_auth("default-token")
                    .header("Accept", "application/json")
                    .send()
                    .await
                    .unwrap();
                let page: Value = resp.json().await.unwrap();
                (page["events"].as_array().unwrap().len(), started.elapsed())
            })
        };
        // The long-poll is held (counted on the reader's metrics) before the write.
        let held = Instant::now() + Duration::from_secs(10);
        while long_polls(&http, reader).await < 1.0 {
            assert!(Instant::now() < held, "the long-poll never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = writer
            .create_package(&http, "default-token", &format!("r{round}"))
            .await;
        let (woken_with, after) = waiting.await.unwrap();
        assert_eq!(woken_with, 1, "round {round}");
        assert!(
            after < Duration::from_secs(10),
            "woken by the commit, not the timeout"
        );

        // Read-your-writes from anywhere: an event committed by a process that asked no pass
        // for it (as one killed right after its COMMIT), read at once, without waiting,
        // through another replica: the read numbers it first.
        let other = &replicas[(round + 2) % 3];
        let id2 = unnumbered_package(&db).await;
        let log = events(&http, other, 0, 0).await;
        let subjects: Vec<&str> = log
            .iter()
            .map(|e| e["subject_id"].as_str().unwrap())
            .collect();
        assert!(subjects.contains(&id.as_str()) && subjects.contains(&id2.as_str()));
    }
    let log = events(&http, &replicas[0], 0, 0).await;
    let sequences: Vec<i64> = log
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=6).collect::<Vec<_>>());
}

/// Two worker processes expire and collect the same 10,000 due packages at the same time: each
/// package is expired once and each blob collected once (counted in the log), and together
/// they expired them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_work_and_do_none_of_it_twice() {
    const PACKAGES: usize = 10_000;
    let env = TestEnv::new().await;
    crate::support::define_instant_class(&env.registry).await;
    let mut makers = Vec::new();
    for m in 0..8 {
        let registry = env.registry.clone();
        makers.push(tokio::spawn(async move {
            for i in (m..PACKAGES).step_by(8) {
                crate::support::due_package(&registry, &format!("{i}"), i as u64, 64).await;
            }
        }));
    }
    for m in makers {
        m.await.unwrap();
    }
    env.registry.sequencer().settle().await;

    let (url, data, blobs) = (
        env.db.url.clone(),
        env.dir.path().join("worker"),
        env.dir.path().join("blobs"),
    );
    let worker = move || {
        Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args([
                "worker",
                "--once",
                "--gc-grace-seconds",
                "0",
                "--expire-batch",
                "10",
            ])
            .env("ARTIFACTSTORE_DATABASE_URL", &url)
            .env("ARTIFACTSTORE_DATA_DIR", &data)
            .env("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", &blobs)
            .env("ARTIFACTSTORE_METRICS_LISTEN", "")
            .env("ARTIFACTSTORE_LOG", "warn")
            .output()
    };
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking(worker.clone()),
        tokio::task::spawn_blocking(worker)
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    let expired_by = |out: &std::process::Output| -> usize {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.split("expired ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {text}"))
    };
    let (by_a, by_b) = (expired_by(&a), expired_by(&b));
    assert_eq!(by_a + by_b, PACKAGES, "every package expired by one worker");

    let client = env.db.client().await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE type = 'v1.package.expired'), \
                    count(DISTINCT subject_id) FILTER (WHERE type = 'v1.package.expired'), \
                    count(*) FILTER (WHERE type = 'v1.blob.collected'), \
                    count(DISTINCT subject_id) FILTER (WHERE type = 'v1.blob.collected'), \
                    count(*), max(sequence), count(sequence) \
             FROM events",
            &[],
        )
        .await
        .unwrap();
    let count = |i: usize| row.get::<_, i64>(i);
    assert_eq!((count(0), count(1)), (PACKAGES as i64, PACKAGES as i64));
    assert_eq!((count(2), count(3)), (PACKAGES as i64, PACKAGES as i64));
    assert_eq!(count(4), count(5), "numbered, no gap");
    assert_eq!(count(4), count(6), "every event numbered");
}

/// Servers sharing a local backend need one shared filesystem. One whose root is another
/// directory (it lacks the marker the first server wrote there and recorded) refuses to
/// start, saying why; started on the shared root it runs. A fleet upgraded to this check, its
/// backend holding bytes and no marker yet, is marked only from a root that holds some of
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_an_unshared_local_root_refuses_to_start() {
    let worker = |db: &TestDb, data: &std::path::Path| {
        crate::support::run(
            &db.url,
            data,
            &["worker", "--once"],
            &[("ARTIFACTSTORE_METRICS_LISTEN", "")],
        )
    };
    let db = TestDb::new().await;
    let first = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let marker = std::fs::read_to_string(
        first
            .data
            .join("blobs")
            .join(artifactstore::registry::MARKER_FILE),
    )
    .unwrap();
    assert!(uuid::Uuid::parse_str(marker.trim()).is_ok(), "{marker}");
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out) = worker(&db, elsewhere.path());
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("local backend `local`") && out.contains("one shared filesystem"),
        "{out}"
    );
    let (code, out) = worker(&db, &first.data);
    assert_eq!(code, 0, "{out}");

    // Bytes stored before any marker (by a registry that does not check): only their
    // directory may be marked.
    let env = TestEnv::new().await;
    let package = crate::support::package(&env.registry).await;
    env.registry
        .ingest_file(
            &artifactstore::domain::TenantId::default_tenant(),
            package.id,
            crate::support::ingest_request("a.bin"),
            crate::support::body(&crate::support::random_bytes(1000, 1), 500),
        )
        .await
        .unwrap();
    let (code, out) = worker(&env.db, elsewhere.path());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("holds none of the bytes"), "{out}");
    let with_the_bytes = tempfile::tempdir().unwrap();
    let (code, out) = crate::support::run(
        &env.db.url,
        with_the_bytes.path(),
        &["worker", "--once"],
        &[
            ("ARTIFACTSTORE_METRICS_LISTEN", ""),
            (
                "ARTIFACTSTORE_STORAGE_LOCAL_ROOT",
                env.dir.path().join("blobs").to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        env.dir
            .path()
            .join("blobs")
            .join(artifactstore::registry::MARKER_FILE)
            .is_file()
    );
}

/// A local root that loses its marker while the server runs (a shared filesystem come
/// unmounted leaves its empty mount point) makes the server unready (its backend unusable; the
/// health report names the lost marker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_root_that_loses_its_marker_makes_the_server_unready() {
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let env = [("ARTIFACTSTORE_TOKENS", TOKENS)];
    // The first start marks the root; the next one finds it marked.
    let first = Server::start_in(&db.url, data.path(), &env);
    assert!(first.terminate().success());
    let server = Server::start_in(&db.url, data.path(), &env);
    let readyz = server
        .metrics
        .clone()
        .unwrap()
        .replace("/metrics", "/readyz");
    Server::wait_ready(&readyz).await;
    std::fs::remove_file(
        data.path()
            .join("blobs")
            .join(artifactstore::registry::MARKER_FILE),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = reqwest::get(&readyz).await.unwrap();
        if resp.status() == 503 {
            let body = resp.text().await.unwrap();
            assert!(body.contains("storage backend is unusable"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still ready without its marker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What servers on Ceph share in these tests: a database, and a storage file naming the S3
/// backend as the default; `None` when no S3 server is configured.
struct S3Fleet {
    db: TestDb,
    dir: tempfile::TempDir,
    storage: String,
}

impl S3Fleet {
    async fn new() -> Option<S3Fleet> {
        let s3 = crate::s3::s3_settings()?;
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::s3::storage_file(dir.path(), &s3, "");
        Some(S3Fleet {
            db: TestDb::new().await,
            storage: storage.to_str().unwrap().to_owned(),
            dir,
        })
    }

    /// The servers' settings: the test's tokens and the storage file.
    fn env(&self) -> [(&str, &str); 2] {
        [
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_STORAGE_FILE", &self.storage),
        ]
    }
}

/// An upload session with an S3 default backend moves between two servers that share only the
/// database and the bucket (each its own data directory): chunks through either, one server
/// killed with SIGKILL mid-chunk, the client resuming through the other from the offset it
/// reports, completion there, and the file whole. Nothing was spooled on either server's disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_session_moves_between_servers_and_survives_one_killed_mid_chunk() {
    let Some(fleet) = S3Fleet::new().await else {
        return;
    };
    use sha2::Digest as _;
    let db = &fleet.db;
    let env = fleet.env();
    let (a, b) = (Server::start(db, &env), Server::start(db, &env));
    let http = reqwest::Client::new();
    let package = a
        .create_package(&http, "default-token", "moving upload")
        .await;
    let data = crate::support::random_bytes(16 << 20, 60);
    let len = data.len();
    let digest = hex::encode(sha2::Sha256::digest(&data));
    let session = crate::support::json_of(
        http.post(b.url("/uploads"))
            .bearer_auth("default-token")
            .json(&serde_json::json!({
                "package_id": package,
                "relative_path": "moving.bin",
                "size": len,
                "expected_digest": format!("sha256:{digest}"),
            }))
            .send()
            .await
            .unwrap(),
        reqwest::StatusCode::CREATED,
    )
    .await;
    let id = session["id"].as_str().unwrap().to_owned();
    let patch = |server: &Server, from: usize, to: usize, body: reqwest::Body| {
        http.patch(server.url(&format!("/uploads/{id}")))
            .bearer_auth("default-token")
            .header("Content-Range", format!("bytes {from}-{}/{len}", to - 1))
            .header("Content-Length", to - from)
            .body(body)
    };
    let offset_at = |server: &Server| {
        let req = http
            .get(server.url(&format!("/uploads/{id}")))
            .bearer_auth("default-token");
        async move {
            let session =
                crate::support::json_of(req.send().await.unwrap(), reqwest::StatusCode::OK).await;
            session["offset"].as_u64().unwrap() as usize
        }
    };
    for (server, from, to) in [(&a, 0, 6 << 20), (&b, 6 << 20, 9 << 20)] {
        let resp = patch(server, from, to, data[from..to].to_vec().into())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    }
    // A slow chunk into `a`, which dies with some of it sent.
    let (from, to) = (9 << 20, len);
    let slow = {
        let pieces: Vec<Vec<u8>> = data[from..to]
            .chunks(256 << 10)
            .map(<[u8]>::to_vec)
            .collect();
        futures::StreamExt::then(futures::stream::iter(pieces), |piece| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, std::io::Error>(piece)
        })
    };
    let sending = tokio::spawn(patch(&a, from, to, reqwest::Body::wrap_stream(slow)).send());
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.kill();
    assert!(
        sending.await.unwrap().is_err(),
        "the chunk was cut off by the kill"
    );
    // The other server says where the session is (nothing of the cut chunk kept) and takes
    // the rest, once the dead server's claim on the session has lapsed (429 "busy", with
    // Retry-After, until then, within 10 s).
    let offset = offset_at(&b).await;
    assert_eq!(offset, 9 << 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // (Refused before its body is read, the connection may close under the client.)
        if let Ok(resp) = patch(&b, offset, len, data[offset..].to_vec().into())
            .send()
            .await
        {
            if resp.status() == 202 {
                break;
            }
            assert_eq!(resp.status(), 429, "{:?}", resp.headers());
            assert!(resp.headers().contains_key("retry-after"));
        }
        assert!(
            Instant::now() < deadline,
            "the dead server's claim never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let file = crate::support::json_of(
        http.post(b.url(&format!("/uploads/{id}/complete")))
            .bearer_auth("default-token")
            .send()
            .await
            .unwrap(),
        reqwest::StatusCode::CREATED,
    )
    .await;
    assert_eq!(file["digests"]["sha256"], digest.as_str());
    let downloaded = http
        .get(b.url(&format!("/files/{}/download", file["id"].as_str().unwrap())))
        .bearer_auth("default-token")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(downloaded[..] == data[..], "the file is whole");
    let spooled = std::fs::read_dir(b.data.join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(spooled, 0, "nothing spooled on a server's disk");
}

/// `appendUpload` requests a server has answered, from its metrics.
async fn chunks_answered(http: &reqwest::Client, metrics: &str) -> f64 {
    let Ok(resp) = http.get(metrics).send().await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("artifactstore_http_requests_total")
                && l.contains("operation=\"appendUpload\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Three API servers with their own data directories (no shared disk), one database and Ceph,
/// behind nginx round-robin: `artifactstore push` of a tree with large files through it, its
/// chunks landing on different servers, one server killed with SIGKILL while the push runs;
/// the push carries on through the others and every file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_take_a_push_while_one_is_killed() {
    let Some(fleet) = S3Fleet::new().await else {
        return;
    };
    use sha2::Digest as _;
    let (db, dir) = (&fleet.db, &fleet.dir);
    let env = fleet.env();
    let mut servers: Vec<Option<Server>> = (0..3).map(|_| Some(Server::start(db, &env))).collect();
    let upstreams: Vec<String> = servers
        .iter()
        .map(|s| {
            let s = s.as_ref().unwrap();
            s.base.trim_start_matches("http://").to_owned()
        })
        .collect();
    let metrics: Vec<String> = servers
        .iter()
        .map(|s| s.as_ref().unwrap().metrics.clone().unwrap())
        .collect();
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx = crate::support::Nginx::round_robin(
        &nginx_dir,
        &upstreams.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // A tree: four large files (sessions of 6 MiB chunks) and some small ones (one-shot PUTs).
    let tree = dir.path().join("tree");
    let mut files = Vec::new();
    for i in 0..4u64 {
        files.push((
            format!("big/{i}.bin"),
            crate::support::random_bytes(30 << 20, 70 + i),
        ));
    }
    for i in 0..8u64 {
        files.push((
            format!("small/{i}.txt"),
            crate::support::random_bytes(1000 + i as usize, i),
        ));
    }
    for (path, data) in &files {
        let full = tree.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
    let push = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .env("ARTIFACTSTORE_URL", &nginx.url)
        .env("ARTIFACTSTORE_TOKEN", "default-token")
        .args([
            "push",
            tree.to_str().unwrap(),
            "--producer",
            "ci",
            "--subject",
            "replicas",
        ])
        .args([
            "--session-threshold",
            "8MiB",
            "--chunk-size",
            "6MiB",
            "--jobs",
            "4",
        ])
        .arg("--no-progress")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once a server has answered chunks, it dies mid-push.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let mut answered = Vec::new();
        for m in &metrics {
            answered.push(chunks_answered(&http, m).await);
        }
        if let Some(i) = answered.iter().position(|&n| n >= 2.0) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no chunks answered: {answered:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    servers[victim].take().unwrap().kill();
    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed: {stderr}");
    let package = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Chunks went to more than one server.
    let mut serving = 1; // the victim
    for (i, m) in metrics.iter().enumerate() {
        if i != victim && chunks_answered(&http, m).await > 0.0 {
            serving += 1;
        }
    }
    assert!(serving >= 2, "chunks all went to one server");
    // The servers' parts in S3 are in their backend metrics.
    let mut parts = 0.0;
    for (i, m) in metrics.iter().enumerate() {
        if i != victim {
            let text = http.get(m).send().await.unwrap().text().await.unwrap();
            parts += text
                .lines()
                .filter(|l| {
                    l.starts_with("artifactstore_backend_operations_total{")
                        && l.contains(r#"operation="piece_put""#)
                        && l.contains(r#"outcome="ok""#)
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    assert!(parts > 0.0, "no piece_put counted");
    // Every file is whole, read through the load balancer.
    let listed = crate::support::json_of(
        http.get(format!("{}/packages/{package}", nginx.url))
            .bearer_auth("default-token")
            .send()
            .await
            .unwrap(),
        reqwest::StatusCode::OK,
    )
    .await;
    let listed = listed["files"].as_array().unwrap();
    assert_eq!(listed.len(), files.len(), "{stderr}");
    for (path, data) in &files {
        let file = listed
            .iter()
            .find(|f| f["relative_path"] == path.as_str())
            .unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(
            file["digests"]["sha256"],
            hex::encode(sha2::Sha256::digest(data)).as_str(),
            "{path}"
        );
        let got = crate::support::download_file(
            &http,
            &nginx.url,
            "default-token",
            file["id"].as_str().unwrap(),
        )
        .await;
        assert!(got[..] == data[..], "{path} is whole");
    }
    for server in servers.iter().flatten() {
        let spooled = std::fs::read_dir(server.data.join("uploads"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(spooled, 0, "nothing spooled on a server's disk");
    }
}

/// A new deployment's replicas all start at once on an empty database, each applying the
/// migrations on start: every one of them must come up, on one schema applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_an_empty_database_migrate_it_once() {
    let db = TestDb::empty().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { artifactstore::db::migrate(&url).await })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        applied += run
            .await
            .unwrap()
            .expect("every replica's migration succeeds");
    }
    let expected = db
        .client()
        .await
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(expected > 0);
    assert_eq!(
        applied as i64, expected,
        "each migration applied exactly once"
    );
}

/// A server whose migrations meet another process's waits for it (logging who holds the
/// turn), then finds nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_waits_for_the_one_in_progress() {
    let db = TestDb::empty().await;
    let holder = db.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x6172_7473_6d69_6772_i64])
        .await
        .unwrap();
    let url = db.url.clone();
    let waiting = tokio::spawn(async move { artifactstore::db::migrate(&url).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "migrated while another held the turn"
    );
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&0x6172_7473_6d69_6772_i64],
        )
        .await
        .unwrap();
    let applied = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the turn was free again")
        .unwrap()
        .unwrap();
    assert!(applied > 0, "the waiting process applied the migrations");
}

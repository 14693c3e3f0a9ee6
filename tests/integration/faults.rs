//! The faults a system of record meets most, with real processes: a server killed mid-upload,
//! PostgreSQL stopped under load, a full disk, a worker killed mid-collection. Nothing
//! recorded is lost, nothing half-written is kept, and everything carries on afterwards.

use crate::support::Server;
use crate::support::{TestDb, download_file, random_bytes, run};
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WRITER: &str = "faults-writer-token";
const TOKENS: &str = "faults:read+write+admin:faults-writer-token";

use crate::support::json_of;

/// A request body of `data` sent in 256 KiB pieces, `pause` apart (so that it is still being
/// sent when the server is killed).
fn slow_body(data: Vec<u8>, pause: Duration) -> reqwest::Body {
    let pieces: Vec<Vec<u8>> = data.chunks(256 << 10).map(<[u8]>::to_vec).collect();
    let stream = futures::stream::iter(pieces).then(move |piece| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(piece)
    });
    reqwest::Body::wrap_stream(stream)
}

/// One of the uploads in flight when the server dies.
#[derive(Clone)]
enum Upload {
    Put { path: String, data: Vec<u8> },
    Form { path: String, data: Vec<u8> },
    Session { id: String, data: Vec<u8> },
}

/// 50 uploads at once (small and large raw PUTs, multipart forms, upload sessions whose
/// second chunk is on its way), a SIGKILL in the middle of them, then a new server on the same
/// data: what was recorded is whole, nothing half-written remains after the sweep, and every
/// session resumes from its offset to a correct file.
async fn killed_mid_upload(storage: &[(&str, &str)]) {
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let mut env = vec![("ARTIFACTSTORE_TOKENS", TOKENS)];
    env.extend_from_slice(storage);
    let server = Server::start_in(&db.url, data.path(), &env);
    let http = Client::new();
    let package = server.create_package(&http, WRITER, "kill -9").await;
    let mut uploads = Vec::new();
    for i in 0..50u64 {
        let upload = match i % 5 {
            0 | 1 => Upload::Put {
                path: format!("put/{i}.bin"),
                data: random_bytes(if i % 2 == 0 { 4096 } else { 300_000 }, i),
            },
            2 => Upload::Put {
                path: format!("big/{i}.bin"),
                data: random_bytes(12 << 20, i),
            },
            3 => Upload::Form {
                path: format!("form/{i}.bin"),
                data: random_bytes(8 << 20, i),
            },
            _ => {
                let data = random_bytes(12 << 20, i);
                let digest = hex::encode(sha2::Sha256::digest(&data));
                let session = json_of(
                    http.post(server.url("/uploads"))
                        .bearer_auth(WRITER)
                        .json(&json!({
                            "package_id": package,
                            "relative_path": format!("session/{i}.bin"),
                            "size": data.len(),
                            "expected_digest": format!("sha256:{digest}"),
                        }))
                        .send()
                        .await
                        .unwrap(),
                    StatusCode::CREATED,
                )
                .await;
                Upload::Session {
                    id: session["id"].as_str().unwrap().to_owned(),
                    data,
                }
            }
        };
        uploads.push(upload);
    }
    // The slow bodies take seconds (256 KiB per 100 ms): the kill comes once the small PUTs
    // are answered and the sessions' first chunks kept (`ready`), while the rest are arriving.
    let pause = Duration::from_millis(100);
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let expect_ready = uploads
        .iter()
        .filter(|u| match u {
            Upload::Put { data, .. } => data.len() <= 1 << 20,
            Upload::Session { .. } => true,
            Upload::Form { .. } => false,
        })
        .count();
    let sends = uploads.iter().cloned().map(|upload| {
        let http = http.clone();
        let base = server.base.clone();
        let package = package.clone();
        let ready = ready.clone();
        let made_it = move || ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            match upload {
                Upload::Put { path, data } => {
                    let slow = data.len() > 1 << 20;
                    let req = http
                        .put(format!("{base}/packages/{package}/files/{path}"))
                        .bearer_auth(WRITER);
                    if slow {
                        req.header("Content-Length", data.len())
                            .body(slow_body(data, pause))
                            .send()
                            .await
                            .map(|r| r.status())
                            .ok()
                    } else {
                        let status = req.body(data).send().await.map(|r| r.status()).ok();
                        made_it();
                        status
                    }
                }
                Upload::Form { path, data } => {
                    let len = data.len() as u64;
                    let part =
                        reqwest::multipart::Part::stream_with_length(slow_body(data, pause), len)
                            .file_name("f");
                    let form = reqwest::multipart::Form::new()
                        .text("relative_path", path)
                        .part("file", part);
                    http.post(format!("{base}/packages/{package}/files"))
                        .bearer_auth(WRITER)
                        .multipart(form)
                        .send()
                        .await
                        .map(|r| r.status())
                        .ok()
                }
                Upload::Session { id, data } => {
                    let half = data.len() / 3;
                    let first = http
                        .patch(format!("{base}/uploads/{id}"))
                        .bearer_auth(WRITER)
                        .header(
                            "Content-Range",
                            format!("bytes 0-{}/{}", half - 1, data.len()),
                        )
                        .body(data[..half].to_vec())
                        .send()
                        .await
                        .ok()?;
                    assert_eq!(first.status(), StatusCode::ACCEPTED);
                    made_it();
                    http.patch(format!("{base}/uploads/{id}"))
                        .bearer_auth(WRITER)
                        .header(
                            "Content-Range",
                            format!("bytes {half}-{}/{}", data.len() - 1, data.len()),
                        )
                        .header("Content-Length", data.len() - half)
                        .body(slow_body(data[half..].to_vec(), pause))
                        .send()
                        .await
                        .map(|r| r.status())
                        .ok()
                }
            }
        }
    });
    let sending = tokio::spawn(futures::future::join_all(sends));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(std::sync::atomic::Ordering::SeqCst) < expect_ready {
        assert!(
            Instant::now() < deadline,
            "the small uploads were never answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    let outcomes = sending.await.unwrap();
    assert!(
        outcomes.iter().any(Option::is_none),
        "some uploads were cut off by the kill"
    );

    // A new server on the same data; the sweep a worker does (staged writes of any age).
    let server = Server::start_in(&db.url, data.path(), &env);
    let mut sweep = vec![("ARTIFACTSTORE_STAGING_GRACE_SECONDS", "0")];
    sweep.extend_from_slice(storage);
    let (code, out) = run(&db.url, data.path(), &["worker", "--once"], &sweep);
    assert_eq!(code, 0, "{out}");
    let staging = data.path().join("blobs/.staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staged writes left behind: {left:?}");

    // Every session resumes from its offset to a correct file.
    for upload in &uploads {
        let Upload::Session { id, data } = upload else {
            continue;
        };
        let session = json_of(
            http.get(server.url(&format!("/uploads/{id}")))
                .bearer_auth(WRITER)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let offset = session["offset"].as_u64().unwrap() as usize;
        assert!(offset >= data.len() / 3, "the first chunk was kept");
        // A session whose chunk the dead server was receiving is busy until that chunk's
        // claim lapses (S3 sessions, within 10 s): 429 with Retry-After, or the connection
        // closed under a body refused before it was read. A client tries again.
        let deadline = Instant::now() + Duration::from_secs(30);
        while offset < data.len() {
            let sent = http
                .patch(server.url(&format!("/uploads/{id}")))
                .bearer_auth(WRITER)
                .header(
                    "Content-Range",
                    format!("bytes {offset}-{}/{}", data.len() - 1, data.len()),
                )
                .body(data[offset..].to_vec())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => break,
                Ok(resp) => assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "upload {id} stayed busy");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        json_of(
            http.post(server.url(&format!("/uploads/{id}/complete")))
                .bearer_auth(WRITER)
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
    }
    let spools: Vec<_> = std::fs::read_dir(data.path().join("uploads"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(spools.is_empty(), "spools left behind: {spools:?}");

    // Every file recorded is whole: what it says, byte for byte. The small ones all made it.
    let listed = json_of(
        http.get(server.url(&format!("/packages/{package}")))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let files = listed["files"].as_array().unwrap();
    for (upload, outcome) in uploads.iter().zip(&outcomes) {
        if let (Upload::Put { path, .. } | Upload::Form { path, .. }, Some(StatusCode::CREATED)) =
            (upload, outcome)
        {
            assert!(
                files.iter().any(|f| f["relative_path"] == path.as_str()),
                "{path} was answered 201 before the kill"
            );
        }
    }
    assert!(
        files.len() >= 20,
        "the small PUTs were all answered before the kill"
    );
    for file in files {
        let id = file["id"].as_str().unwrap();
        let bytes = download_file(&http, &server.base, WRITER, id).await;
        assert_eq!(bytes.len() as u64, file["size"].as_u64().unwrap());
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            file["digests"]["sha256"].as_str().unwrap()
        );
    }
    drop(server);
    // Every recorded copy is there and right; the views are what the log says.
    let (code, out) = run(&db.url, data.path(), &["verify"], storage);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&db.url, data.path(), &["replay", "--check"], &[]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_loses_nothing_and_its_sessions_resume() {
    killed_mid_upload(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_to_s3_loses_nothing_and_its_sessions_resume() {
    let Some(s3) = crate::s3::s3_settings() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::s3::storage_file(dir.path(), &s3, "");
    killed_mid_upload(&[("ARTIFACTSTORE_STORAGE_FILE", storage.to_str().unwrap())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_answers_503s_then_carries_on() {
    postgres_stopped_under_load(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_with_s3_answers_503s_then_carries_on() {
    let Some(s3) = crate::s3::s3_settings() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::s3::storage_file(dir.path(), &s3, "");
    postgres_stopped_under_load(&[("ARTIFACTSTORE_STORAGE_FILE", storage.to_str().unwrap())]).await;
}

/// Writers put files the whole time while PostgreSQL is stopped for 10 s and started again:
/// every request is answered (503 with `Retry-After` during the outage), everything answered
/// 201 is there, the event listener comes back, and no restart is needed.
async fn postgres_stopped_under_load(storage: &[(&str, &str)]) {
    use artifactstore::db::cluster::{ClusterOptions, ManagedCluster};
    let dir = tempfile::tempdir().unwrap();
    let cluster = ManagedCluster::start_or_reuse(ClusterOptions {
        dir: dir.path().to_owned(),
        cluster_dir: None,
        unsafe_fast: true,
    })
    .await
    .unwrap();
    cluster
        .ensure_database(artifactstore::db::cluster::DATABASE)
        .await
        .unwrap();
    let url = cluster.url(artifactstore::db::cluster::DATABASE);
    let data = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("ARTIFACTSTORE_TOKENS", TOKENS),
        ("ARTIFACTSTORE_DB_POOL_TIMEOUT_SECONDS", "2"),
    ];
    env.extend_from_slice(storage);
    let server = Server::start_in(&url, data.path(), &env);
    let http = Client::new();
    let package = server.create_package(&http, WRITER, "db down").await;

    // Writers put files the whole time; each answer (never a hang) is counted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = (0..4).map(|w| {
        let (http, base, package, stop) = (
            http.clone(),
            server.base.clone(),
            package.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut stored, mut unavailable) = (Vec::new(), 0u32);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let path = format!("w{w}/{i}.bin");
                let sent = http
                    .put(format!("{base}/packages/{package}/files/{path}"))
                    .bearer_auth(WRITER)
                    .body(random_bytes(2000, w * 100_000 + i))
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await
                    .expect("answered within the pool timeout, never left hanging");
                match sent.status() {
                    StatusCode::CREATED => stored.push(path),
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(sent.headers().contains_key("retry-after"));
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => panic!("{path}: {other}"),
                }
            }
            (stored, unavailable)
        })
    });
    let writers: Vec<_> = writers.collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.halt();
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.resume().unwrap();
    // Carrying on without a restart: writes succeed again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = http
            .get(server.url("/packages"))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the server never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stored = Vec::new();
    let mut unavailable = 0;
    for writer in writers {
        let (s, u) = writer.await.unwrap();
        stored.extend(s);
        unavailable += u;
    }
    assert!(unavailable > 0, "the outage was seen");
    // Everything answered 201 is there.
    let listed = json_of(
        http.get(server.url(&format!("/packages/{package}")))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let files: std::collections::HashSet<&str> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["relative_path"].as_str().unwrap())
        .collect();
    for path in &stored {
        assert!(files.contains(path.as_str()), "{path} was answered 201");
    }
    // The event listener came back: a tailer from 0 sees every committed event exactly once,
    // and a long-poll is woken by a new commit.
    let mut since = 0;
    let mut sequences = Vec::new();
    loop {
        let page = json_of(
            http.get(server.url(&format!("/events?since={since}&wait=0&limit=1000")))
                .bearer_auth(WRITER)
                .header("Accept", "application/json")
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        sequences.extend(events.iter().map(|e| e["sequence"].as_i64().unwrap()));
        since = page["next_since"].as_i64().unwrap();
    }
    let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
    assert_eq!(sequences, expected, "gapless, in order, each once");
    // A package and its files; a write whose answer was lost in the outage may have committed.
    assert!(sequences.len() > stored.len(), "a package and its files");
    let waiting = tokio::spawn({
        let (http, url) = (
            http.clone(),
            server.url(&format!("/events?since={since}&wait=20")),
        );
        async move {
            let started = Instant::now();
            let resp = http
                .get(url)
                .bearer_auth(WRITER)
                .header("Accept", "application/json")
                .send()
                .await
                .unwrap();
            (started.elapsed(), resp.json::<Value>().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    json_of(
        http.post(server.url("/packages"))
            .bearer_auth(WRITER)
            .json(&json!({"producer": "faults", "subject": "after"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let (took, page) = waiting.await.unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    assert!(
        took < Duration::from_secs(10),
        "woken by the listener, not the wait"
    );
}

/// Mounts a tmpfs of `mib` MiB at `dir` (root only); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_nothing_half_written_and_recovers() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let Some(_disk) = Tmpfs::mount(&data, 48) else {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    };
    let db = TestDb::new().await;
    let server = Server::start_in(
        &db.url,
        &data,
        &[
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_MIN_FREE_BYTES", "4MiB"),
        ],
    );
    let http = Client::new();
    let package = server.create_package(&http, WRITER, "full").await;
    let kept = json_of(
        http.put(server.url(&format!("/packages/{package}/files/kept.bin")))
            .bearer_auth(WRITER)
            .body(random_bytes(1 << 20, 1))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    // Someone else's file fills the disk but for ~10 MiB.
    let filler = data.join("filler");
    let free = nix::sys::statvfs::statvfs(&data).unwrap();
    let free = free.blocks_available() * free.fragment_size();
    std::fs::write(&filler, vec![0u8; (free - (10 << 20)) as usize]).unwrap();
    // Declared and too large for what is left over the minimum: refused up front, before the
    // body (the client is still sending when the answer comes).
    let mut raw = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PUT /packages/{package}/files/declared.bin HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {WRITER}\r\nContent-Length: {}\r\n\r\n",
        8 << 20
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(head.as_bytes()).await.unwrap();
    raw.write_all(&[1u8; 65536]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut answer))
        .await
        .expect("answered before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
    assert!(answer.contains("/insufficient-storage"), "{answer}");
    // Not declared: it runs into the full disk, and is refused the same way.
    let chunks = futures::stream::iter(
        (0..12u64).map(|i| Ok::<_, std::io::Error>(random_bytes(1 << 20, 10 + i))),
    );
    let refused = http
        .put(server.url(&format!("/packages/{package}/files/streamed.bin")))
        .bearer_auth(WRITER)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // The answer comes while the body is still being sent, and the server then closes the
    // connection: the client may see the reset before it reads the answer.
    match refused {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    // Nothing half-written: no staged bytes, nothing recorded.
    let staged: Vec<_> = std::fs::read_dir(data.join("blobs/.staging"))
        .unwrap()
        .flatten()
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    let listed = json_of(
        http.get(server.url(&format!("/packages/{package}")))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 1);
    // Reads and the event stream go on.
    let id = kept["id"].as_str().unwrap();
    let bytes = download_file(&http, &server.base, WRITER, id).await;
    assert_eq!(bytes.len(), 1 << 20);
    let events = http
        .get(server.url("/events?since=0&wait=0"))
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    // Space freed: writes work again at once.
    std::fs::remove_file(&filler).unwrap();
    json_of(
        http.put(server.url(&format!("/packages/{package}/files/after.bin")))
            .bearer_auth(WRITER)
            .body(random_bytes(8 << 20, 3))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_collection_leaves_the_rest_to_the_next_run() {
    let env = crate::support::TestEnv::new().await;
    let root = env.store.root().to_str().unwrap().to_owned();
    worker_killed_mid_collection(
        &env.db,
        &env.registry,
        env.store.clone(),
        &[("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", &root)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_collection_on_s3_leaves_the_rest_to_the_next_run() {
    let Some(s3) = crate::s3::s3_settings() else {
        return;
    };
    let db = TestDb::new().await;
    let store = std::sync::Arc::new(artifactstore::storage::s3::S3Store::open("s3", &s3).unwrap());
    let pool = artifactstore::db::pool(&db.url, 24).unwrap();
    let registry = artifactstore::registry::Registry::new(
        pool,
        artifactstore::storage::Backends::single(store.clone()),
    );
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::s3::storage_file(dir.path(), &s3, "");
    worker_killed_mid_collection(
        &db,
        &registry,
        store,
        &[("ARTIFACTSTORE_STORAGE_FILE", storage.to_str().unwrap())],
    )
    .await;
}

/// 300 packages due at once, a worker killed once it is collecting their bytes, then a second
/// run: each package expires once, each blob is collected once, no bytes are left behind and
/// none still referenced are gone.
async fn worker_killed_mid_collection(
    db: &TestDb,
    registry: &artifactstore::registry::Registry,
    store: std::sync::Arc<dyn artifactstore::storage::BlobStore>,
    storage: &[(&str, &str)],
) {
    crate::support::define_instant_class(registry).await;
    // 300 packages due at once, each with bytes of its own.
    for i in 0..300u64 {
        crate::support::due_package(registry, &format!("s{i}"), i, 3000).await;
    }
    let data = tempfile::tempdir().unwrap();
    let worker = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
        cmd.args([
            "worker",
            "--once",
            "--gc-grace-seconds",
            "0",
            "--expire-batch",
            "10",
        ])
        .args(extra)
        .env("ARTIFACTSTORE_DATABASE_URL", &db.url)
        .env("ARTIFACTSTORE_DATA_DIR", data.path())
        .env("ARTIFACTSTORE_LOG", "warn")
        .envs(storage.iter().copied());
        cmd
    };
    let client = db.client().await;
    let count = |kind: &'static str| {
        let client = &client;
        async move {
            client
                .query_one("SELECT count(*) FROM events WHERE type = $1", &[&kind])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // Killed once collection has started (it follows expiry): some batches done, the rest
    // not.
    let mut child = worker(&[]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("v1.blob.collected").await == 0 {
        assert!(Instant::now() < deadline, "the worker never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let collected_at_kill = count("v1.blob.collected").await;
    assert!(
        collected_at_kill < 300,
        "killed mid-collection: {collected_at_kill} collected"
    );
    // The next run finishes it.
    let status = worker(&[]).status().unwrap();
    assert!(status.success());
    assert_eq!(count("v1.package.expired").await, 300, "each package once");
    assert_eq!(count("v1.blob.collected").await, 300, "each blob once");
    // Nothing referenced is missing; nothing unreferenced is left.
    let unreferenced: i64 = client
        .query_one(
            "SELECT count(*) FROM blobs WHERE unreferenced_since IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unreferenced, 0);
    let mut listed = store.list();
    let mut on_disk = 0;
    while let Some(blob) = listed.next().await {
        blob.unwrap();
        on_disk += 1;
    }
    assert_eq!(on_disk, 0, "every collected blob's bytes are gone");
    let report = artifactstore::events::replay(&db.pool(2), true)
        .await
        .unwrap();
    assert_eq!(report.identical, Some(true));
}

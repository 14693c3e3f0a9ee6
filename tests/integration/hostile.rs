//! The server tried as an attacker (or a clumsy client) would: abort storms, slow heads and
//! bodies, huge and malformed bodies without a token, the complete/PATCH race, stored files
//! that look like our problems, cross-tenant oracles, development mode in the open. Each test
//! failed on the code before its fix.

use crate::support::Server;
use crate::support::{TestClock, TestDb, TestEnv, body, random_bytes};
use artifactstore::domain::{RelativePath, TenantId};
use artifactstore::identity::DualHasher;
use artifactstore::registry::NewPackage;
use futures::SinkExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALPHA_WRITER: &str = "alpha-writer-token";
const ALPHA_READER: &str = "alpha-reader-token";
const ALPHA_ADMIN: &str = "alpha-admin-token";
const BETA_WRITER: &str = "beta-writer-token";
const OPERATOR: &str = "system-admin-token";
const TOKENS: &str = "alpha:read+write:alpha-writer-token,alpha:read:alpha-reader-token,\
                      alpha:admin:alpha-admin-token,beta:read+write:beta-writer-token,\
                      system:admin:system-admin-token";

fn start(db: &TestDb, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("ARTIFACTSTORE_TOKENS", TOKENS)];
    env.extend_from_slice(extra);
    Server::start(db, &env)
}

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

use crate::support::json_of;

async fn new_package(http: &Client, server: &Server, token: &str) -> String {
    server.create_package(http, token, "s").await
}

/// A new upload session of alpha's for `path` in `package`; its id.
async fn new_session(
    http: &Client,
    server: &Server,
    package: &str,
    path: &str,
    size: Option<u64>,
) -> String {
    let mut body = json!({"package_id": package, "relative_path": path});
    if let Some(size) = size {
        body["size"] = size.into();
    }
    let session = json_of(
        http.post(server.url("/uploads"))
            .bearer_auth(ALPHA_WRITER)
            .json(&body)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    session["id"].as_str().unwrap().to_owned()
}

/// Reads from a raw connection until the server closes it (or `bound` passes): what it sent.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read).await.ok().map(|()| out)
}

/// The status code and the head (lowercased) of a raw HTTP/1.1 answer, read within `bound`.
async fn answer_within(stream: &mut TcpStream, bound: Duration) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        Some(())
    };
    tokio::time::timeout(bound, read).await.ok()??;
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head))
}

/// `GET /packages` as alpha's reader, answered (whatever the answer) within `bound`.
async fn list_within(http: &Client, server: &Server, bound: Duration) -> reqwest::Response {
    let list = http
        .get(server.url("/packages"))
        .bearer_auth(ALPHA_READER)
        .send();
    tokio::time::timeout(bound, list)
        .await
        .expect("answered, not left hanging")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_reads_abandoned_by_their_clients_never_wedge_the_pool() {
    let db = TestDb::new().await;
    let server = start(&db, &[("ARTIFACTSTORE_DB_POOL_SIZE", "4")]);
    let addr = address(&server);
    for round in 0..2 {
        let storm = (0..200).map(|i| {
            let addr = addr.clone();
            async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                let request = format!(
                    "GET /events?since=0&wait=0&type=abandoned-{round}-{i} HTTP/1.1\r\n\
                     Host: x\r\nAuthorization: Bearer {ALPHA_READER}\r\n\r\n"
                );
                s.write_all(request.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis((i % 4) as u64)).await;
                drop(s);
            }
        });
        futures::future::join_all(storm).await;
    }
    let http = Client::new();
    let started = Instant::now();
    let listed = list_within(&http, &server, Duration::from_secs(5)).await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let health = http
        .get(server.url("/health"))
        .bearer_auth(ALPHA_ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(health, StatusCode::OK).await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_gets_no_connection_in_time_is_a_503_with_retry_after() {
    let db = TestDb::new().await;
    let server = start(
        &db,
        &[
            ("ARTIFACTSTORE_DB_POOL_SIZE", "1"),
            ("ARTIFACTSTORE_DB_POOL_TIMEOUT_SECONDS", "1"),
        ],
    );
    let http = Client::new();
    // Warm the one connection, then hold it: a listing that waits on a table lock.
    json_of(
        http.get(server.url("/packages"))
            .bearer_auth(ALPHA_READER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE packages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let held = tokio::spawn({
        let http = http.clone();
        let url = server.url("/packages");
        async move { http.get(url).bearer_auth(ALPHA_READER).send().await }
    });
    // Until the held listing has the connection: it waits on the lock.
    let probe = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = probe
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listing never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let refused = list_within(&http, &server, Duration::from_secs(10)).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    tx.rollback().await.unwrap();
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn only_the_operator_defines_retention_classes_and_only_sane_ones() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let put = |token: &'static str, body: Value| {
        http.put(server.url("/retention-classes/century"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    for token in [ALPHA_ADMIN, ALPHA_WRITER] {
        let resp = put(token, json!({"duration_seconds": 1})).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    for seconds in [0u64, 3_155_760_001, 1_000_000_000_000_000] {
        let resp = put(OPERATOR, json!({"duration_seconds": seconds}))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{seconds}");
    }
    let defined = json_of(
        put(OPERATOR, json!({"duration_seconds": 3_155_760_000u64}))
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(defined["duration_seconds"], 3_155_760_000u64);
    // The longest class still finalizes.
    let p = json_of(
        http.post(server.url("/packages"))
            .bearer_auth(ALPHA_WRITER)
            .json(&json!({"producer": "p", "subject": "s", "retention_class": "century"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let id = p["id"].as_str().unwrap();
    let done = json_of(
        http.post(server.url(&format!("/packages/{id}/finalize")))
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(done["retention"]["expires_at"].is_string(), "{done}");
}

/// Whether some process holds the lock on the spool file (a chunk being received).
fn spool_locked(path: &std::path::Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_while_a_chunk_is_in_flight_is_refused_and_published_bytes_stay_intact() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let id = new_session(&http, &server, &package, "raced.bin", None).await;
    let upload = server.url(&format!("/uploads/{id}"));
    let (first, second) = (random_bytes(3 << 20, 1), random_bytes(2 << 20, 2));
    json_of(
        http.patch(&upload)
            .bearer_auth(ALPHA_WRITER)
            .header("Content-Range", format!("bytes 0-{}/*", first.len() - 1))
            .body(first.clone())
            .send()
            .await
            .unwrap(),
        StatusCode::ACCEPTED,
    )
    .await;

    // A second chunk, held open halfway.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let range = format!("bytes {}-{}/*", first.len(), first.len() + second.len() - 1);
    let in_flight = tokio::spawn(
        http.patch(&upload)
            .bearer_auth(ALPHA_WRITER)
            .header("Content-Range", range)
            .header("Content-Length", second.len())
            .body(reqwest::Body::wrap_stream(rx))
            .send(),
    );
    tx.send(Ok(second[..1 << 20].to_vec())).await.unwrap();
    let spool = server.data.join("uploads").join(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spool_locked(&spool) {
        assert!(Instant::now() < deadline, "the chunk never took the spool");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Completing (or cancelling) now must not take the spool from under the chunk.
    let complete = server.url(&format!("/uploads/{id}/complete"));
    let refused = http
        .post(&complete)
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::CONFLICT,
        "{:?}",
        refused.text().await
    );
    let refused = http
        .delete(&upload)
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);

    tx.send(Ok(second[1 << 20..].to_vec())).await.unwrap();
    drop(tx);
    let accepted = in_flight.await.unwrap().unwrap();
    assert_eq!(
        json_of(accepted, StatusCode::ACCEPTED).await["offset"],
        (first.len() + second.len()) as u64
    );
    let file = json_of(
        http.post(&complete)
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    // After completion the session takes nothing more.
    let late = http
        .patch(&upload)
        .bearer_auth(ALPHA_WRITER)
        .header(
            "Content-Range",
            format!(
                "bytes {}-{}/*",
                first.len() + second.len(),
                first.len() + second.len()
            ),
        )
        .body(vec![0u8])
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::NOT_FOUND);

    // The published bytes are exactly what was sent, for this tenant and for one deduplicating
    // against them.
    let whole = [first.as_slice(), second.as_slice()].concat();
    let fid = file["id"].as_str().unwrap();
    let got = http
        .get(server.url(&format!("/files/{fid}/download")))
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == whole[..], "downloaded bytes differ");
    let beta_package = new_package(&http, &server, BETA_WRITER).await;
    let again = json_of(
        http.put(server.url(&format!("/packages/{beta_package}/files/same.bin")))
            .bearer_auth(BETA_WRITER)
            .body(whole.clone())
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        again["digests"]["sha256"],
        hex::encode(sha2::Sha256::digest(&whole))
    );
    let got = http
        .get(server.url(&format!(
            "/files/{}/download",
            again["id"].as_str().unwrap()
        )))
        .bearer_auth(BETA_WRITER)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == whole[..], "the deduplicated copy differs");
}

#[tokio::test]
async fn a_blob_changed_after_publication_is_replaced_not_trusted_by_its_size() {
    use artifactstore::storage::{BlobStore, CommitOutcome};
    let env = TestEnv::new().await;
    let data = random_bytes(3 << 20, 9);
    let address = DualHasher::digest(&data).primary_address();
    // Bytes of the right size, but not these: written into after they were published.
    let path = env.store.path_of(&address);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut wrong = data.clone();
    wrong[1 << 20] ^= 0xff;
    std::fs::write(&path, &wrong).unwrap();
    let mut staged = env.store.stage().await.unwrap();
    staged
        .write(bytes::Bytes::from(data.clone()))
        .await
        .unwrap();
    staged.prepare(&address).await.unwrap();
    assert_eq!(
        staged.commit(&address).await.unwrap(),
        CommitOutcome::Stored,
        "a same-size file with other bytes is not the blob"
    );
    assert!(std::fs::read(&path).unwrap() == data);
    // The right bytes already there: a dedup.
    let mut staged = env.store.stage().await.unwrap();
    staged.write(bytes::Bytes::from(data)).await.unwrap();
    staged.prepare(&address).await.unwrap();
    assert_eq!(
        staged.commit(&address).await.unwrap(),
        CommitOutcome::AlreadyPresent
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_look_like_problems_download_byte_for_byte_and_stream() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let small = br#"{"type":"about:blank","title":"t","status":400,"detail":"stored"}"#.to_vec();
    let large = random_bytes(48 << 20, 3);
    let mut ids = Vec::new();
    for (name, data) in [("small.json", &small), ("large.json", &large)] {
        let file = json_of(
            http.put(server.url(&format!("/packages/{package}/files/{name}")))
                .bearer_auth(ALPHA_WRITER)
                .header("Content-Type", "application/problem+json")
                .body(data.clone())
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(file["media_type"], "application/problem+json");
        ids.push(file["id"].as_str().unwrap().to_owned());
    }
    let resp = http
        .get(server.url(&format!("/files/{}/download", ids[0])))
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        small,
        "no member added"
    );

    let pid = server.child.id();
    let before = peak_rss_kib(pid);
    let downloads = (0..3).map(|_| {
        let url = server.url(&format!("/files/{}/download", ids[1]));
        let http = http.clone();
        async move {
            let bytes = http
                .get(url)
                .bearer_auth(ALPHA_WRITER)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            sha2::Sha256::digest(&bytes)
        }
    });
    let expected = sha2::Sha256::digest(&large);
    for digest in futures::future::join_all(downloads).await {
        assert_eq!(digest, expected);
    }
    let grown_mib = peak_rss_kib(pid).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 48,
        "three 48 MiB downloads grew the server by {grown_mib} MiB"
    );
}

/// Sends a request head and the first `sent` bytes of a body announced as `length` bytes, and
/// returns the status the server answers with before the rest arrives (if it does in time).
/// Such an answer always says `Connection: close`: the rest of the body is never read.
async fn answer_before_body(server: &Server, head: &str, length: u64, sent: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(address(server)).await.unwrap();
    let request = format!("{head}Host: x\r\nContent-Length: {length}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    let (status, head) = answer_within(&mut s, Duration::from_secs(5)).await?;
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_is_read_before_its_token_and_package_are_checked() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let form_head = |token: Option<&str>, package: &str| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /packages/{package}/files HTTP/1.1\r\n{auth}\
             Content-Type: multipart/form-data; boundary=xyz\r\n"
        )
    };
    let part = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n";
    let mut start_of_form = part.to_vec();
    start_of_form.extend_from_slice(&[b'x'; 60_000]);
    let big = 1u64 << 30;
    // No token: 401 with a gigabyte announced and a little sent.
    assert_eq!(
        answer_before_body(&server, &form_head(None, &package), big, &start_of_form).await,
        Some(401)
    );
    // A read token: 403; an unknown package: 404; before the body either way.
    assert_eq!(
        answer_before_body(
            &server,
            &form_head(Some(ALPHA_READER), &package),
            big >> 4,
            &start_of_form
        )
        .await,
        Some(403)
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        answer_before_body(
            &server,
            &form_head(Some(ALPHA_WRITER), &unknown),
            big >> 4,
            &start_of_form
        )
        .await,
        Some(404)
    );
    // A JSON body without a token is not read either.
    assert_eq!(
        answer_before_body(
            &server,
            "POST /packages HTTP/1.1\r\nContent-Type: application/json\r\n",
            8 << 20,
            b"{\"producer\": ",
        )
        .await,
        Some(401)
    );

    // Text parts are small; forms name known parts, one file: refused otherwise.
    let file = |data: &[u8], name: &str| {
        reqwest::multipart::Part::bytes(data.to_vec()).file_name(name.to_owned())
    };
    let form = reqwest::multipart::Form::new;
    let send = |form: reqwest::multipart::Form| {
        http.post(server.url(&format!("/packages/{package}/files")))
            .bearer_auth(ALPHA_WRITER)
            .multipart(form)
            .send()
    };
    for (form, status) in [
        (
            form()
                .text("relative_path", "a".repeat(5000))
                .part("file", file(b"x", "x")),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            form().text("surprise", "x").part("file", file(b"x", "x")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            form()
                .part("file", file(b"x", "x"))
                .part("file", file(b"y", "y")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_eq!(send(form).await.unwrap().status(), status);
    }
    // The text parts may come after the file part, as generated clients send them.
    let late = form()
        .part("file", file(b"late", "ignored"))
        .text("relative_path", "named/late.txt")
        .text("media_type", "text/plain");
    let file = json_of(send(late).await.unwrap(), StatusCode::CREATED).await;
    assert_eq!(file["relative_path"], "named/late.txt");
    assert_eq!(file["media_type"], "text/plain");
    let listed = json_of(
        http.get(server.url(&format!("/packages/{package}")))
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 1, "{listed}");

    // A problem never echoes more than 1 KiB of what it was sent.
    let junk = "q".repeat(10_000);
    let resp = http
        .put(server.url(&format!(
            "/packages/{package}/files/x.bin?media_type={junk}"
        )))
        .bearer_auth(ALPHA_WRITER)
        .body("x")
        .send()
        .await
        .unwrap();
    let problem = json_of(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        problem["detail"].as_str().unwrap().len() <= 1100,
        "{}",
        problem["detail"].as_str().unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_connections_are_capped() {
    let db = TestDb::new().await;
    let server = start(
        &db,
        &[
            ("ARTIFACTSTORE_HEADER_READ_TIMEOUT_SECONDS", "2"),
            ("ARTIFACTSTORE_BODY_IDLE_TIMEOUT_SECONDS", "2"),
            ("ARTIFACTSTORE_MAX_CONNECTIONS", "64"),
        ],
    );
    let addr = address(&server);
    // 100 half-sent heads and 50 connections that send nothing: all closed by the server,
    // though only 64 are served at once.
    let started = Instant::now();
    let slow = (0..150).map(|i| {
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            if i < 100 {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap();
            }
            read_until_closed(&mut s, Duration::from_secs(20)).await
        }
    });
    let closed = futures::future::join_all(slow).await;
    assert!(
        closed.iter().all(Option::is_some),
        "every slow connection was closed"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    // While the slots are taken, a real client waits, then is served.
    let http = Client::new();
    let resp = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A kept-alive connection that goes quiet after a request is closed too.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("closed after going quiet");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A chunk whose body goes quiet ends; the session keeps what arrived.
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let id = new_session(&http, &server, &package, "quiet.bin", Some(1000)).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PATCH /uploads/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA_WRITER}\r\n\
         Content-Range: bytes 0-999/1000\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[7u8; 100]).await.unwrap();
    let quiet = Instant::now();
    read_until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("the quiet chunk ended");
    assert!(quiet.elapsed() >= Duration::from_secs(2));
    let now = json_of(
        http.get(server.url(&format!("/uploads/{id}")))
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(now["offset"], 100, "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_bounded_in_all_and_per_tenant() {
    let db = TestDb::new().await;
    let server = start(
        &db,
        &[
            ("ARTIFACTSTORE_MAX_LONG_POLLS", "5"),
            ("ARTIFACTSTORE_MAX_LONG_POLLS_PER_TENANT", "3"),
        ],
    );
    let http = Client::new();
    let poll = |token: &'static str| {
        let http = http.clone();
        let url = server.url("/events?since=1000000&wait=20");
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
    };
    let health = || async {
        let h = json_of(
            http.get(server.url("/health"))
                .bearer_auth(OPERATOR)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        h["events"]["waiting_requests"].as_u64().unwrap()
    };
    let until_waiting = |want: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while health().await != want {
            assert!(Instant::now() < deadline, "never {want} waiting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let alpha: Vec<_> = (0..3).map(|_| poll(ALPHA_READER)).collect();
    until_waiting(3).await;
    let refused = http
        .get(server.url("/events?since=0&wait=20"))
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem = json_of(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("tenant"),
        "{problem}"
    );
    // Another tenant still has room, up to the server's limit.
    let beta: Vec<_> = (0..2).map(|_| poll(BETA_WRITER)).collect();
    until_waiting(5).await;
    let refused = http
        .get(server.url("/events?since=0&wait=20"))
        .bearer_auth(BETA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // A place given up (the client went away) is free again.
    for waiter in alpha.into_iter().chain(beta) {
        waiter.abort();
    }
    until_waiting(0).await;
    let resp = http
        .get(server.url("/events?since=0&wait=0"))
        .bearer_auth(ALPHA_READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn tenants_see_their_own_storage_times_never_another_tenants() {
    let env = TestEnv::new().await;
    let clock = Arc::new(TestClock::at(1_800_000_000));
    let registry = env
        .registry
        .clone()
        .with_clock(clock.clone() as Arc<dyn artifactstore::domain::Clock>);
    let (alpha, beta) = (
        TenantId::new("alpha").unwrap(),
        TenantId::new("beta").unwrap(),
    );
    let data = random_bytes(5000, 4);
    let mut packages = Vec::new();
    for tenant in [&alpha, &beta] {
        let p = registry
            .create_package(
                tenant,
                NewPackage {
                    producer: "p".into(),
                    subject: "s".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        registry
            .ingest_file(
                tenant,
                p.id,
                crate::support::ingest_request("same.bin"),
                body(&data, 1000),
            )
            .await
            .unwrap();
        packages.push(p.id);
        // Beta stores the same bytes a day later.
        clock.advance(86_400);
    }
    let alpha_time = "2027-01-15T08:00:00.000000Z";
    let beta_time = "2027-01-16T08:00:00.000000Z";
    registry
        .finalize_package(&beta, packages[1], None)
        .await
        .unwrap();
    let manifest = registry.get_manifest(&beta, packages[1]).await.unwrap();
    let json = artifactstore::manifest::Manifest::jcs(&manifest.cbor).unwrap();
    let json: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        json["storage_receipts"][0]["stored_at"], beta_time,
        "{json}"
    );
    let mine = registry
        .list_locations(None, None, Some(&beta), None, 10)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].stored_at.to_string(), beta_time);
    // The operator sees when the copy was written: alpha's upload.
    let all = registry
        .list_locations(None, None, None, None, 10)
        .await
        .unwrap();
    assert_eq!(all[0].stored_at.to_string(), alpha_time);
}

#[test]
fn without_tokens_the_server_stays_on_loopback_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
        cmd.args(["serve", "--listen", "0.0.0.0:0"])
            .env("ARTIFACTSTORE_DATA_DIR", dir.path())
            .env(
                "ARTIFACTSTORE_DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none",
            )
            .env_remove("ARTIFACTSTORE_TOKENS")
            .env_remove("ARTIFACTSTORE_TOKENS_FILE");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("ARTIFACTSTORE_DEV_MODE"), "{stderr}");
    // With dev mode it goes on (and fails later, at the unreachable database).
    let out = run(&[("ARTIFACTSTORE_DEV_MODE", "true")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("ARTIFACTSTORE_DEV_MODE"), "{stderr}");
    // A tokens file named on purpose but empty is a mistake, not development mode.
    let empty = dir.path().join("tokens.toml");
    std::fs::write(&empty, "# no tokens yet\n").unwrap();
    let out = run(&[("ARTIFACTSTORE_TOKENS_FILE", empty.to_str().unwrap())]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("ARTIFACTSTORE_TOKENS_FILE"), "{stderr}");
}

/// A server, a package of alpha's, and files in it: `empty.bin` (no bytes) and
/// `site/résumé page.html` (`text/html` that would run script if a browser rendered it).
struct Holes {
    server: Server,
    http: Client,
    package: String,
    empty: Value,
    page: Value,
    _db: TestDb,
}

impl Holes {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let server = start(&db, &[]);
        let http = Client::new();
        let package = new_package(&http, &server, ALPHA_WRITER).await;
        let empty = json_of(
            http.put(server.url(&format!("/packages/{package}/files/empty.bin")))
                .bearer_auth(ALPHA_WRITER)
                .body(Vec::new())
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        let page = json_of(
            http.put(server.url(&format!(
                "/packages/{package}/files/site/r%C3%A9sum%C3%A9%20page.html"
            )))
            .bearer_auth(ALPHA_WRITER)
            .header("Content-Type", "text/html")
            .body("<script>alert(1)</script>")
            .send()
            .await
            .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        Holes {
            server,
            http,
            package,
            empty,
            page,
            _db: db,
        }
    }

    async fn download(&self, file: &Value, range: Option<String>) -> reqwest::Response {
        let id = file["id"].as_str().unwrap();
        let mut req = self
            .http
            .get(self.server.url(&format!("/files/{id}/download")))
            .bearer_auth(ALPHA_WRITER);
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        req.send().await.unwrap()
    }
}

#[tokio::test]
async fn a_range_of_an_empty_file_is_unsatisfiable_not_invalid() {
    let holes = Holes::new().await;
    let resp = holes.download(&holes.empty, Some("bytes=0-".into())).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()["content-range"], "bytes */0");
    let whole = holes.download(&holes.empty, None).await;
    assert_eq!(whole.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_range_header_of_many_ranges_is_ignored_whole() {
    let holes = Holes::new().await;
    let ranges = |n: usize| {
        format!(
            "bytes={}",
            (0..n)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    for n in [17, 34_000] {
        let resp = holes.download(&holes.page, Some(ranges(n))).await;
        assert_eq!(resp.status(), StatusCode::OK, "{n} ranges");
        assert_eq!(resp.bytes().await.unwrap(), "<script>alert(1)</script>");
    }
    // Beyond sixteen they are not even looked at: ranges past the end answer the whole file
    // instead of a 416 (which sixteen of them still get).
    let past_end = |n: usize| {
        format!(
            "bytes={}",
            (0..n)
                .map(|i| format!("{}-{}", 1000 + i, 1000 + i))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let resp = holes.download(&holes.page, Some(past_end(17))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = holes.download(&holes.page, Some(past_end(16))).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let one = holes.download(&holes.page, Some("bytes=1-2".into())).await;
    assert_eq!(one.status(), StatusCode::PARTIAL_CONTENT);
}

#[tokio::test]
async fn downloads_are_named_attachments_that_are_never_sniffed() {
    let holes = Holes::new().await;
    for range in [None, Some("bytes=0-3".to_owned())] {
        let resp = holes.download(&holes.page, range).await;
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            resp.headers()["content-disposition"],
            "attachment; filename=\"r_sum_ page.html\"; \
             filename*=UTF-8''r%C3%A9sum%C3%A9%20page.html"
        );
    }
    let resp = holes.download(&holes.empty, None).await;
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"empty.bin\""
    );
}

#[tokio::test]
async fn paths_that_display_as_others_or_have_two_spellings_are_refused() {
    let holes = Holes::new().await;
    for (path, status) in [
        ("evil%E2%80%AEtxt.exe", StatusCode::UNPROCESSABLE_ENTITY),
        ("a%E2%80%8Eb", StatusCode::UNPROCESSABLE_ENTITY),
        ("x%E2%81%A6y", StatusCode::UNPROCESSABLE_ENTITY),
        ("e%CC%81.txt", StatusCode::UNPROCESSABLE_ENTITY),
        ("a%C2%85b", StatusCode::UNPROCESSABLE_ENTITY),
        ("a%7Fb", StatusCode::UNPROCESSABLE_ENTITY),
        // The composed spelling is fine.
        ("%C3%A9.txt", StatusCode::CREATED),
    ] {
        let url = format!("/packages/{}/files/{path}", holes.package);
        let resp = holes
            .http
            .put(holes.server.url(&url))
            .bearer_auth(ALPHA_WRITER)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
}

#[tokio::test]
async fn a_json_member_the_operation_does_not_define_is_refused() {
    let holes = Holes::new().await;
    let http = &holes.http;
    for (method, path, body) in [
        (
            "POST",
            "/packages".to_owned(),
            json!({"producer": "p", "subject": "s", "retention_clas": "long"}),
        ),
        (
            "POST",
            "/uploads".to_owned(),
            json!({"package_id": holes.package, "relative_path": "a", "sise": 3}),
        ),
        (
            "PATCH",
            format!("/packages/{}/retention", holes.package),
            json!({"retention_class": "long", "forse": true}),
        ),
    ] {
        let resp = http
            .request(method.parse().unwrap(), holes.server.url(&path))
            .bearer_auth(ALPHA_ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = json_of(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem["status"], 400, "{path}: {problem}");
    }
}

#[tokio::test]
async fn health_tells_anyone_the_status_and_only_admins_the_details() {
    let holes = Holes::new().await;
    let health = |token: Option<&'static str>| {
        let mut req = holes.http.get(holes.server.url("/health"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move { json_of(req.send().await.unwrap(), StatusCode::OK).await }
    };
    assert_eq!(health(None).await, json!({"status": "ok"}));
    assert_eq!(health(Some(ALPHA_READER)).await, json!({"status": "ok"}));
    assert_eq!(health(Some("not-a-token")).await, json!({"status": "ok"}));
    let admin = health(Some(ALPHA_ADMIN)).await;
    assert_eq!(admin["database"]["ok"], true, "{admin}");
    assert!(
        admin["backends"].is_array() && admin["events"].is_object(),
        "{admin}"
    );
    // What counts every tenant's activity is the operator's alone.
    assert!(admin["database"]["latest_sequence"].is_null(), "{admin}");
    assert!(admin["events"]["waiting_requests"].is_null(), "{admin}");
    let operator = health(Some(OPERATOR)).await;
    assert!(
        operator["database"]["latest_sequence"].is_i64(),
        "{operator}"
    );
    assert_eq!(operator["events"]["waiting_requests"], 0, "{operator}");
}

#[tokio::test]
async fn usage_reads_the_tenants_rows_not_every_blob() {
    let env = TestEnv::new().await;
    let tenant = TenantId::new("alpha").unwrap();
    let p = env
        .registry
        .create_package(
            &tenant,
            NewPackage {
                producer: "p".into(),
                subject: "s".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    env.registry
        .ingest_file(
            &tenant,
            p.id,
            crate::support::ingest_request("one.bin"),
            body(b"one", 3),
        )
        .await
        .unwrap();
    let client = env.db.client().await;
    // Many blobs of others (referenced: not part of the collection backlog).
    client
        .batch_execute(
            "INSERT INTO blobs (blake3, sha256, size, created_at) \
             SELECT sha256(('b' || i)::bytea), sha256(('s' || i)::bytea), 100, now() \
             FROM generate_series(1, 20000) i; ANALYZE blobs; ANALYZE files;",
        )
        .await
        .unwrap();
    let plan: Value = client
        .query_one(
            &format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) {}",
                artifactstore::registry::USAGE_SQL
            ),
            &[&"alpha", &time::OffsetDateTime::now_utc()],
        )
        .await
        .unwrap()
        .get(0);
    fn blob_rows(node: &Value) -> u64 {
        let own = if node["Relation Name"] == "blobs" {
            let rows = node["Actual Rows"].as_f64().unwrap_or(0.0)
                + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
            (rows * node["Actual Loops"].as_f64().unwrap_or(1.0)) as u64
        } else {
            0
        };
        own + node["Plans"]
            .as_array()
            .map_or(0, |plans| plans.iter().map(blob_rows).sum())
    }
    let read = blob_rows(&plan[0]["Plan"]);
    assert!(read < 100, "usage read {read} blob rows: {plan}");
    let usage = env.registry.usage(&tenant).await.unwrap();
    assert_eq!(
        (usage.files, usage.logical_bytes, usage.physical_bytes),
        (1, 3, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_like_http1_ones() {
    let db = TestDb::new().await;
    let server = start(&db, &[("ARTIFACTSTORE_HEADER_READ_TIMEOUT_SECONDS", "2")]);
    // One request, then nothing: the server closes the connection (GOAWAY, then EOF).
    let tcp = TcpStream::connect(address(&server)).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("{}/health", server.base))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // A connection that only says hello is closed too.
    let tcp = TcpStream::connect(address(&server)).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the silent HTTP/2 connection was closed")
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_download_is_cut_off() {
    let db = TestDb::new().await;
    let server = start(&db, &[("ARTIFACTSTORE_BODY_IDLE_TIMEOUT_SECONDS", "2")]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let size = 64usize << 20;
    let file = json_of(
        http.put(server.url(&format!("/packages/{package}/files/big.bin")))
            .bearer_auth(ALPHA_WRITER)
            .body(random_bytes(size, 8))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let mut s = TcpStream::connect(address(&server)).await.unwrap();
    let request = format!(
        "GET /files/{}/download HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA_WRITER}\r\n\r\n",
        file["id"].as_str().unwrap()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    // Not reading: the socket buffers fill and the server's writes stop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = read_until_closed(&mut s, Duration::from_secs(30))
        .await
        .expect("the server ended the connection");
    assert!(got.len() < size, "{} bytes of {size} arrived", got.len());
}

#[tokio::test]
async fn a_form_that_never_gets_to_its_parts_is_refused() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let url = server.url(&format!("/packages/{package}/files"));
    // Two MiB of preamble, and part headers that never end.
    let preamble = [vec![b'p'; 2 << 20], b"\r\n--xyz--\r\n".to_vec()].concat();
    let endless_headers = [
        b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nX: ".to_vec(),
        vec![b'h'; 2 << 20],
    ]
    .concat();
    for body in [preamble, endless_headers] {
        let resp = http
            .post(&url)
            .bearer_auth(ALPHA_WRITER)
            .header("Content-Type", "multipart/form-data; boundary=xyz")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST,
            "{status}"
        );
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let problem = json_of(resp, status).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("other than the file")
            );
        }
    }
    // A path already taken, named before the file part: refused before the file is read.
    json_of(
        http.put(server.url(&format!("/packages/{package}/files/taken.bin")))
            .bearer_auth(ALPHA_WRITER)
            .body("x")
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let head = format!(
        "POST /packages/{package}/files HTTP/1.1\r\nAuthorization: Bearer {ALPHA_WRITER}\r\n\
         Content-Type: multipart/form-data; boundary=xyz\r\n"
    );
    let start_of_form = [
        b"--xyz\r\nContent-Disposition: form-data; name=\"relative_path\"\r\n\r\ntaken.bin\r\n"
            .to_vec(),
        b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".to_vec(),
        vec![b'x'; 60_000],
    ]
    .concat();
    assert_eq!(
        answer_before_body(&server, &head, 1 << 30, &start_of_form).await,
        Some(409)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_being_completed_is_neither_cancelled_nor_appended_to_nor_lost() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let id = new_session(&http, &server, &package, "c.bin", Some(4)).await;
    let upload = server.url(&format!("/uploads/{id}"));
    let patch = |range: &'static str, body: &'static [u8]| {
        http.patch(&upload)
            .bearer_auth(ALPHA_WRITER)
            .header("Content-Range", range)
            .body(body)
            .send()
    };
    assert_eq!(patch("bytes 0-1/4", b"ab").await.unwrap().status(), 202);
    // A completion in another process has marked it and moved its spool into place.
    let spool = server.data.join("uploads").join(&id);
    let moved = spool.with_extension("published");
    std::fs::rename(&spool, &moved).unwrap();
    let client = db.client().await;
    client
        .execute(
            "UPDATE uploads SET state = 'completing' WHERE id = $1",
            &[&uuid::Uuid::parse_str(&id).unwrap()],
        )
        .await
        .unwrap();
    let complete = server.url(&format!("/uploads/{id}/complete"));
    for resp in [
        http.delete(&upload).bearer_auth(ALPHA_WRITER).send().await,
        http.post(&complete).bearer_auth(ALPHA_WRITER).send().await,
        patch("bytes 2-3/4", b"cd").await,
    ] {
        assert_eq!(resp.unwrap().status(), StatusCode::CONFLICT);
    }
    let still = http
        .get(&upload)
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(still, StatusCode::OK).await["offset"], 2, "kept");
    // That completion was killed before it moved anything: complete it again, and the
    // session takes chunks once more.
    std::fs::rename(&moved, &spool).unwrap();
    let refused = http
        .post(&complete)
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::CONFLICT,
        "2 of 4 bytes: not complete"
    );
    assert_eq!(patch("bytes 2-3/4", b"cd").await.unwrap().status(), 202);
    let file = json_of(
        http.post(&complete)
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(file["size"], 4);
}

#[tokio::test]
async fn expiry_leaves_a_session_that_is_being_worked_on_for_later() {
    let env = TestEnv::new().await;
    let clock = Arc::new(TestClock::at(1_800_000_000));
    let registry = env
        .registry
        .clone()
        .with_clock(clock.clone() as Arc<dyn artifactstore::domain::Clock>)
        .with_upload_dir(env.dir.path().join("uploads"));
    let tenant = TenantId::default_tenant();
    let p = crate::support::package(&registry).await;
    let session = registry
        .create_upload(
            &tenant,
            artifactstore::registry::NewUpload {
                package_id: p.id,
                relative_path: RelativePath::new("e.bin").unwrap(),
                media_type: None,
                size: None,
                expected_digest: None,
                replace: false,
            },
        )
        .await
        .unwrap();
    clock.advance(registry.limits().upload_ttl_seconds as i64 + 1);
    let spool = env.dir.path().join("uploads").join(session.id.to_string());
    let held = nix::fcntl::Flock::lock(
        std::fs::File::open(&spool).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    assert_eq!(
        registry.expire_uploads().await.unwrap(),
        0,
        "busy: left alone"
    );
    assert!(spool.exists());
    drop(held);
    assert_eq!(registry.expire_uploads().await.unwrap(), 1);
    assert!(!spool.exists());
}

#[tokio::test]
async fn the_orphan_sweep_never_empties_a_backend_the_database_does_not_know() {
    use artifactstore::storage::BlobStore;
    let env = TestEnv::new().await;
    // Bytes the database knows nothing of, as in a backend pointed at the wrong database.
    let mut addresses = Vec::new();
    for i in 0..150u64 {
        let data = random_bytes(100, 1000 + i);
        let address = DualHasher::digest(&data).primary_address();
        let mut staged = env.store.stage().await.unwrap();
        staged.write(bytes::Bytes::from(data)).await.unwrap();
        staged.commit(&address).await.unwrap();
        addresses.push(address);
    }
    let err = env
        .registry
        .collect_orphans()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing"), "{err}");
    for address in &addresses {
        assert!(env.store.head(address).await.unwrap().is_some());
    }
    // A few strays beside what the database knows are a crash's leftovers: collected.
    for address in &addresses[5..] {
        env.store.delete(address).await.unwrap();
    }
    let tenant = TenantId::default_tenant();
    let p = crate::support::package(&env.registry).await;
    for i in 0..20u64 {
        let data = random_bytes(50, 5000 + i);
        env.registry
            .ingest_file(
                &tenant,
                p.id,
                crate::support::ingest_request(&format!("f{i}")),
                body(&data, 50),
            )
            .await
            .unwrap();
    }
    assert_eq!(env.registry.collect_orphans().await.unwrap(), 5);
    for address in &addresses[..5] {
        assert!(env.store.head(address).await.unwrap().is_none());
    }
}

//! Resumable upload sessions: the lifecycle under random chunking, duplicate and out-of-order
//! chunks, broken connections and resumes; expiry.

use crate::support::Server;
use crate::support::{TestDb, TestEnv, random_bytes};
use artifactstore::domain::{RelativePath, TenantId};
use artifactstore::registry::NewUpload;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Step {
    /// Send the next `len` bytes from the right offset.
    Next(usize),
    /// Re-send a chunk starting `back` bytes before the offset (a duplicate).
    Stale(usize),
    /// Send a chunk starting `ahead` bytes past the offset (out of order).
    Ahead(usize),
    /// Send `len` bytes, but break the connection after `sent` of them.
    Broken(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..40_000).prop_map(Step::Next),
        1 => (1usize..5_000).prop_map(Step::Stale),
        1 => (1usize..5_000).prop_map(Step::Ahead),
        1 => ((2usize..40_000), (0usize..40_000)).prop_map(|(l, s)| Step::Broken(l, s % l)),
    ]
}

async fn patch(
    http: &Client,
    base: &str,
    id: &str,
    data: &[u8],
    start: usize,
    len: usize,
    total: Option<usize>,
) -> reqwest::Response {
    let end = start + len - 1;
    let total = total.map(|t| t.to_string()).unwrap_or_else(|| "*".into());
    http.patch(format!("{base}/uploads/{id}"))
        .header("Content-Range", format!("bytes {start}-{end}/{total}"))
        .body(data[start..start + len].to_vec())
        .send()
        .await
        .unwrap()
}

async fn offset(http: &Client, base: &str, id: &str) -> usize {
    let v: Value = http
        .get(format!("{base}/uploads/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["offset"].as_u64().unwrap() as usize
}

/// Whatever the client does, the session ends with exactly the right bytes (and digests), or
/// with a clean error that leaves the offset where the server says it is.
#[test]
fn upload_lifecycle_property() {
    lifecycle_property(&[], 24);
}

/// The same against S3, where sessions are shared (their state in the database; these files,
/// under a part's size, wait in `upload_pending` until completion: the parts themselves are
/// covered by `shared_uploads`).
#[test]
fn upload_lifecycle_property_shared_sessions_on_s3() {
    let Some(s3) = crate::s3::s3_settings() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::s3::storage_file(dir.path(), &s3, "multipart_threshold_bytes = 1024\n");
    lifecycle_property(
        &[("ARTIFACTSTORE_STORAGE_FILE", storage.to_str().unwrap())],
        16,
    );
}

fn lifecycle_property(server_env: &[(&str, &str)], cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(TestDb::new());
    let server = Server::start(&db, server_env);
    let base = server.base.clone();
    let http = Client::new();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0usize..150_000,
        proptest::collection::vec(step(), 1..12),
        any::<bool>(),
        any::<u64>(),
    );
    runner
        .run(&strategy, |(size, steps, declare_size, seed)| {
            rt.block_on(async {
                let data = random_bytes(size, seed);
                let package: Value = http
                    .post(format!("{base}/packages"))
                    .json(&json!({"producer": "prop", "subject": "s"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let pid = package["id"].as_str().unwrap();
                let mut create = json!({
                    "package_id": pid, "relative_path": "big/file.bin",
                    "expected_digest": format!("blake3:{}", blake3::hash(&data).to_hex()),
                });
                if declare_size {
                    create["size"] = json!(size);
                }
                let resp = http
                    .post(format!("{base}/uploads"))
                    .json(&create)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                let session: Value = resp.json().await.unwrap();
                let id = session["id"].as_str().unwrap().to_owned();
                assert_eq!(session["offset"], 0);
                let total = declare_size.then_some(size);

                let mut expected_offset = 0usize;
                for s in steps {
                    let remaining = size - expected_offset;
                    match s {
                        Step::Next(len) if remaining > 0 => {
                            let len = len.min(remaining);
                            let resp =
                                patch(&http, &base, &id, &data, expected_offset, len, total).await;
                            assert_eq!(resp.status(), StatusCode::ACCEPTED);
                            expected_offset += len;
                            assert_eq!(
                                resp.headers()["upload-offset"].to_str().unwrap(),
                                expected_offset.to_string()
                            );
                        }
                        Step::Stale(back) if expected_offset > 0 => {
                            let start = expected_offset - back.min(expected_offset);
                            let len = (expected_offset - start).max(1).min(size - start);
                            let resp = patch(&http, &base, &id, &data, start, len, total).await;
                            assert_eq!(resp.status().as_u16(), 416);
                            assert_eq!(
                                resp.headers()["upload-offset"].to_str().unwrap(),
                                expected_offset.to_string()
                            );
                            let problem: Value = resp.json().await.unwrap();
                            assert_eq!(problem["offset"], expected_offset);
                        }
                        Step::Ahead(ahead) if expected_offset + ahead < size => {
                            let start = expected_offset + ahead;
                            let resp = patch(&http, &base, &id, &data, start, 1, total).await;
                            assert_eq!(resp.status().as_u16(), 416);
                        }
                        Step::Broken(len, sent) if remaining > 1 => {
                            let len = len.min(remaining);
                            let sent = sent.min(len - 1);
                            let piece = data[expected_offset..expected_offset + sent].to_vec();
                            let stream = futures::stream::iter(vec![
                                Ok::<_, std::io::Error>(bytes::Bytes::from(piece)),
                                Err(std::io::Error::other("connection dropped")),
                            ]);
                            let end = expected_offset + len - 1;
                            let result = http
                                .patch(format!("{base}/uploads/{id}"))
                                .header("Content-Range", format!("bytes {expected_offset}-{end}/*"))
                                .body(reqwest::Body::wrap_stream(stream))
                                .send()
                                .await;
                            assert!(result.is_err() || !result.unwrap().status().is_success());
                            // Resume from whatever the server kept (some prefix of what was sent).
                            let kept = offset(&http, &base, &id).await;
                            assert!(
                                kept >= expected_offset && kept <= expected_offset + sent,
                                "kept {kept}"
                            );
                            expected_offset = kept;
                        }
                        _ => {}
                    }
                    assert_eq!(offset(&http, &base, &id).await, expected_offset);
                }
                // Finish, in one chunk.
                if expected_offset < size {
                    let resp = patch(
                        &http,
                        &base,
                        &id,
                        &data,
                        expected_offset,
                        size - expected_offset,
                        total,
                    )
                    .await;
                    assert_eq!(resp.status(), StatusCode::ACCEPTED);
                }
                let resp = http
                    .post(format!("{base}/uploads/{id}/complete"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                let file: Value = resp.json().await.unwrap();
                assert_eq!(file["size"], size);
                assert_eq!(
                    file["digests"]["blake3"],
                    blake3::hash(&data).to_hex().as_str()
                );
                let got = http
                    .get(format!(
                        "{base}/files/{}/download",
                        file["id"].as_str().unwrap()
                    ))
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                assert_eq!(got.as_ref(), data.as_slice());
                // The session is gone.
                assert_eq!(
                    http.get(format!("{base}/uploads/{id}"))
                        .send()
                        .await
                        .unwrap()
                        .status(),
                    StatusCode::NOT_FOUND
                );
            });
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_errors_are_clean() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_MAX_FILE_SIZE", "64KiB")]);
    let http = Client::new();
    let base = &server.base;
    let package: Value = http
        .post(format!("{base}/packages"))
        .json(&json!({"producer": "p", "subject": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = package["id"].as_str().unwrap();
    let create = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/uploads");
        async move { http.post(url).json(&body).send().await.unwrap() }
    };
    // Declared too large: 413. Bad path: 422. Unknown package: 404.
    assert_eq!(
        create(json!({"package_id": pid, "relative_path": "a", "size": 1_000_000}))
            .await
            .status()
            .as_u16(),
        413
    );
    assert_eq!(
        create(json!({"package_id": pid, "relative_path": "../a"}))
            .await
            .status()
            .as_u16(),
        422
    );
    assert_eq!(
        create(json!({"package_id": uuid::Uuid::now_v7(), "relative_path": "a"}))
            .await
            .status()
            .as_u16(),
        404
    );

    // Wrong digest at completion: 422, and the session and bytes are gone.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let s: Value =
        create(json!({"package_id": pid, "relative_path": "w.bin", "expected_digest": wrong}))
            .await
            .json()
            .await
            .unwrap();
    let id = s["id"].as_str().unwrap();
    let data = random_bytes(1000, 1);
    assert_eq!(
        patch(&http, base, id, &data, 0, 1000, Some(1000))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let resp = http
        .post(format!("{base}/uploads/{id}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(
        http.get(format!("{base}/uploads/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    // Bad Content-Range: 400; missing: 400; body shorter than the range: 400, nothing kept.
    let s: Value = create(json!({"package_id": pid, "relative_path": "c.bin", "size": 100}))
        .await
        .json()
        .await
        .unwrap();
    let id = s["id"].as_str().unwrap();
    // Malformed (not the documented pattern): 400. Well-formed but impossible: 422.
    for (range, status) in [
        ("bytes 0-9", 400),
        ("bytes=0-9/100", 400),
        ("bytes 9-0/100", 422),
    ] {
        let resp = http
            .patch(format!("{base}/uploads/{id}"))
            .header("Content-Range", range)
            .body(vec![0u8; 10])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{range}");
    }
    assert_eq!(
        http.patch(format!("{base}/uploads/{id}"))
            .body(vec![0u8; 10])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    let resp = http
        .patch(format!("{base}/uploads/{id}"))
        .header("Content-Range", "bytes 0-19/100")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    // A total that contradicts the declared size: 422.
    let resp = http
        .patch(format!("{base}/uploads/{id}"))
        .header("Content-Range", "bytes 0-9/50")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    assert_eq!(offset(&http, base, id).await, 0);
    // Completing early: 409.
    assert_eq!(
        http.post(format!("{base}/uploads/{id}/complete"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        409
    );
    // Cancel: 204, then gone.
    assert_eq!(
        http.delete(format!("{base}/uploads/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    assert_eq!(
        http.get(format!("{base}/uploads/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    // Growing past the maximum file size while the total is unknown: 413.
    let s: Value = create(json!({"package_id": pid, "relative_path": "huge.bin"}))
        .await
        .json()
        .await
        .unwrap();
    let id = s["id"].as_str().unwrap();
    let big = random_bytes(70 * 1024, 2);
    assert_eq!(
        patch(&http, base, id, &big, 0, big.len(), None)
            .await
            .status()
            .as_u16(),
        413
    );
    assert_eq!(offset(&http, base, id).await, 0);
    let spool = server.data.join("uploads");
    let spooled: u64 = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(spooled, 0, "no bytes of refused chunks are kept");
}

/// A session for `path` in `package`, of any size and digest.
fn new_upload(package: artifactstore::domain::PackageId, path: &str) -> NewUpload {
    NewUpload {
        package_id: package,
        relative_path: RelativePath::new(path).unwrap(),
        media_type: None,
        size: None,
        expected_digest: None,
        replace: false,
    }
}

/// Sends `bytes` as a session's first chunk.
async fn first_chunk(
    registry: &artifactstore::registry::Registry,
    session: uuid::Uuid,
    bytes: &[u8],
) {
    let chunk = artifactstore::registry::Chunk {
        start: 0,
        end: None,
        total: None,
    };
    registry
        .append_upload(
            &TenantId::default_tenant(),
            session,
            chunk,
            crate::support::body(bytes, 4),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn abandoned_sessions_expire_and_their_bytes_are_removed() {
    let env = TestEnv::new().await;
    let clock = Arc::new(crate::support::TestClock::at(2_000_000_000));
    let spool = env.dir.path().join("uploads");
    let registry = env
        .registry
        .clone()
        .with_clock(clock.clone())
        .with_upload_dir(&spool);
    let tenant = TenantId::default_tenant();
    let package = crate::support::package(&registry).await;
    let new = |path: &str| new_upload(package.id, path);
    let old = registry
        .create_upload(&tenant, new("old.bin"))
        .await
        .unwrap();
    first_chunk(&registry, old.id, b"abandoned bytes").await;
    clock.advance(23 * 3600);
    let young = registry
        .create_upload(&tenant, new("young.bin"))
        .await
        .unwrap();
    assert_eq!(registry.expire_uploads().await.unwrap(), 0);
    clock.advance(2 * 3600);
    assert_eq!(registry.expire_uploads().await.unwrap(), 1);
    assert!(
        !spool.join(old.id.to_string()).exists(),
        "expired bytes removed"
    );
    assert!(spool.join(young.id.to_string()).exists());
    assert!(matches!(
        registry.get_upload(&tenant, old.id).await,
        Err(artifactstore::Error::NotFound { .. })
    ));
    registry.get_upload(&tenant, young.id).await.unwrap();
}

/// A completion asked again while the first is recording the file (its answer lost, say) is
/// busy (429, retry: the file appears); one whose bytes are not on this server (another's
/// spool) is a conflict.
#[tokio::test]
async fn completing_again_while_a_completion_runs_is_busy_and_bytes_elsewhere_conflict() {
    let env = TestEnv::new().await;
    let spool = env.dir.path().join("uploads");
    let registry = env.registry.clone().with_upload_dir(&spool);
    let tenant = TenantId::default_tenant();
    let package = crate::support::package(&registry).await;
    let new = |path: &str| new_upload(package.id, path);
    let client = env.db.client().await;
    for (path, completing) in [("running.bin", true), ("elsewhere.bin", false)] {
        let session = registry.create_upload(&tenant, new(path)).await.unwrap();
        first_chunk(&registry, session.id, b"bytes").await;
        // As a completion that moved the spool into place and is recording the file leaves it
        // (or as a session whose spool is on another server's disk).
        std::fs::remove_file(spool.join(session.id.to_string())).unwrap();
        if completing {
            client
                .execute(
                    "UPDATE uploads SET state = 'completing' WHERE id = $1",
                    &[&session.id],
                )
                .await
                .unwrap();
        }
        let refused = registry.complete_upload(&tenant, session.id).await;
        match (completing, refused) {
            (true, Err(artifactstore::Error::Busy(_))) => {}
            (false, Err(artifactstore::Error::Conflict(_))) => {}
            (_, other) => panic!("{path}: {other:?}"),
        }
    }
}

/// A server restart loses the in-memory hashing state of sessions; completion must still end
/// with the right digests (it re-reads the spooled bytes), and the fast path (state kept) must
/// agree with it.
#[tokio::test]
async fn completion_after_a_restart_rehashes_the_spooled_bytes() {
    let env = TestEnv::new().await;
    let spool = env.dir.path().join("uploads");
    let before = env.registry.clone().with_upload_dir(&spool);
    let tenant = TenantId::default_tenant();
    let data = random_bytes(3_000_000, 77);
    let package = crate::support::package(&before).await;
    let new = |path: &str| NewUpload {
        package_id: package.id,
        relative_path: RelativePath::new(path).unwrap(),
        media_type: None,
        size: Some(data.len() as u64),
        expected_digest: Some(artifactstore::DualHasher::digest(&data).sha256_address()),
        replace: false,
    };
    let half = data.len() / 2;
    for (path, restart) in [("restarted.bin", true), ("kept.bin", false)] {
        let session = before.create_upload(&tenant, new(path)).await.unwrap();
        let first = artifactstore::registry::Chunk {
            start: 0,
            end: Some(half as u64 - 1),
            total: None,
        };
        before
            .append_upload(
                &tenant,
                session.id,
                first,
                crate::support::body(&data[..half], 65_536),
            )
            .await
            .unwrap();
        // A new registry over the same database and spool: a restarted server.
        let after = if restart {
            artifactstore::Registry::new(
                env.registry.pool().clone(),
                env.registry.backends().clone(),
            )
            .with_upload_dir(&spool)
        } else {
            before.clone()
        };
        let rest = artifactstore::registry::Chunk {
            start: half as u64,
            end: None,
            total: Some(data.len() as u64),
        };
        after
            .append_upload(
                &tenant,
                session.id,
                rest,
                crate::support::body(&data[half..], 65_536),
            )
            .await
            .unwrap();
        let file = after.complete_upload(&tenant, session.id).await.unwrap();
        assert_eq!(file.blake3.0, *blake3::hash(&data).as_bytes(), "{path}");
        let back =
            crate::support::collect(after.read_file(&tenant, file.id, None).await.unwrap().body)
                .await;
        assert_eq!(back, data, "{path}");
        assert!(
            !spool.join(session.id.to_string()).exists(),
            "spool removed"
        );
    }
}

//! Retrieval records: every download, manifest read and package read by a token, listed for
//! the tenant's admin at `GET /audit/retrievals`, and deleted by the worker after
//! `ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS`.

use super::*;

const ADMIN: &str = "acme-admin-token";
const ALL_TOKENS: &str = "acme:read+write:acme-writer-token,acme:read:acme-reader-token,\
    globex:write:globex-writer-token,acme:admin:acme-admin-token,globex:admin:globex-admin-token";

/// The records `path` lists, once at least `count` are there (written within a second).
async fn records(api: &Api, token: &str, path: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let page = api.get_json(token, path.to_owned()).await;
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= count || std::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_recorded_for_the_tenants_admin() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[("ARTIFACTSTORE_TOKENS", ALL_TOKENS)]);
    let package = api
        .create(WRITER, json!({"producer": "ci", "subject": "audit"}))
        .await;
    let id = package["id"].as_str().unwrap().to_owned();
    let data = random_bytes(3 << 20, 9);
    let file: Value = api
        .put(WRITER, &id, "big.bin", &data)
        .await
        .json()
        .await
        .unwrap();
    let file_id = file["id"].as_str().unwrap().to_owned();
    // Large enough that the socket buffers cannot take it whole: a client that goes away
    // after its first bytes leaves most of it unsent.
    let huge = random_bytes(48 << 20, 10);
    let resp = api.put(WRITER, &id, "huge.bin", &huge).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    api.finalize(WRITER, &id).await;
    let etag = format!("\"{}\"", file["content_address"].as_str().unwrap());
    let get = |path: String| api.http.get(api.url(&path)).bearer_auth(READER);

    // Seven reads by the reader, one of them given up after its first bytes.
    let resp = get(format!("/packages/{id}"))
        .header("x-request-id", "audit-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        get(format!("/packages/{id}/manifest"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get(format!("/packages/{id}/manifest.json"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(api.download(READER, &file).await, data);
    let resp = get(format!("/files/{file_id}/download"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 10);
    let resp = get(format!("/packages/{id}/files/big.bin"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let mut resp = get(format!("/packages/{id}/files/huge.bin"))
        .send()
        .await
        .unwrap();
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);

    let all = records(&api, ADMIN, "/audit/retrievals", 7).await;
    let summary: Vec<(&str, u64, &str, u64)> = all
        .iter()
        .map(|r| {
            (
                r["what"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["bytes_served"].as_u64().unwrap(),
            )
        })
        .collect();
    // (Downloads are recorded when their bytes have gone, so the order may vary.)
    assert_eq!(summary.len(), 7, "{all:?}");
    let find = |what: &str, status: u64, outcome: &str| {
        all.iter()
            .find(|r| r["what"] == what && r["status"] == status && r["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {what} {status} {outcome} in {all:?}"))
    };
    let package_read = find("package", 200, "complete");
    assert_eq!(package_read["bytes_served"], 0);
    assert_eq!(package_read["request_id"], "audit-1");
    let manifests: Vec<_> = all.iter().filter(|r| r["what"] == "manifest").collect();
    assert_eq!(manifests.len(), 2);
    assert!(
        manifests
            .iter()
            .all(|m| m["bytes_served"].as_u64().unwrap() > 0)
    );
    let whole = find("file", 200, "complete");
    assert_eq!(whole["bytes_served"], data.len() as u64);
    assert_eq!(whole["file_id"], file_id.as_str());
    let range = find("file", 206, "complete");
    assert_eq!(range["bytes_served"], 10);
    assert_eq!(
        (&range["range_start"], &range["range_end"]),
        (&json!(10), &json!(19))
    );
    assert_eq!(find("file", 304, "not_modified")["bytes_served"], 0);
    let aborted = find("file", 200, "aborted");
    assert!(aborted["bytes_served"].as_u64().unwrap() < huge.len() as u64);
    for r in &all {
        assert_eq!(r["token_name"], "acme-token-2");
        assert_eq!(r["package_id"], id.as_str());
        assert_eq!(r["client_addr"], "127.0.0.1");
    }

    // Filters and pages.
    let by_file = records(
        &api,
        ADMIN,
        &format!("/audit/retrievals?file_id={file_id}"),
        3,
    )
    .await;
    assert_eq!(by_file.len(), 3);
    let first = api
        .get_json(ADMIN, "/audit/retrievals?limit=4".into())
        .await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = api
        .get_json(ADMIN, format!("/audit/retrievals?limit=4&cursor={cursor}"))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
    assert!(rest.get("next_cursor").is_none());
    let future = api
        .get_json(ADMIN, "/audit/retrievals?since=2999-01-01T00:00:00Z".into())
        .await;
    assert!(future["items"].as_array().unwrap().is_empty());

    // The tenant's admin only: a reader is refused, another tenant's admin sees nothing of it.
    let resp = get("/audit/retrievals".into()).send().await.unwrap();
    assert_problem(resp, 403).await;
    let resp = api
        .http
        .get(api.url("/audit/retrievals"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 401).await;
    let theirs = api
        .get_json("globex-admin-token", "/audit/retrievals".into())
        .await;
    assert!(theirs["items"].as_array().unwrap().is_empty());
    let resp = api
        .http
        .get(api.url("/audit/retrievals?cursor=forged"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 422).await;

    // The worker deletes records older than they are kept.
    db.client()
        .await
        .execute(
            "UPDATE retrieval_records SET at = at - interval '3 days' WHERE what = 'package'",
            &[],
        )
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let (code, output) = crate::support::run(
        &db.url,
        data_dir.path(),
        &["worker", "--once"],
        &[
            ("ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS", "2"),
            (
                "ARTIFACTSTORE_STORAGE_LOCAL_ROOT",
                api.server.data.join("blobs").to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(code, 0, "{output}");
    let left = api.get_json(ADMIN, "/audit/retrievals".into()).await;
    let left = left["items"].as_array().unwrap();
    assert!(
        left.len() >= 6 && left.iter().all(|r| r["what"] != "package"),
        "{left:?}"
    );
}

/// With the smallest queue, concurrent downloads wait for room in turn: none is lost, none
/// hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_record_queue_slows_reads_and_loses_none() {
    let db = TestDb::new().await;
    let api = Api::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", ALL_TOKENS),
            ("ARTIFACTSTORE_RETRIEVAL_QUEUE", "1"),
        ],
    );
    let package = api
        .create(WRITER, json!({"producer": "ci", "subject": "queue"}))
        .await;
    let id = package["id"].as_str().unwrap().to_owned();
    let file: Value = api
        .put(WRITER, &id, "a.bin", &random_bytes(4096, 1))
        .await
        .json()
        .await
        .unwrap();
    let downloads = (0..20).map(|_| api.download(READER, &file));
    let bodies = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        futures::future::join_all(downloads),
    )
    .await
    .expect("downloads finish");
    assert!(bodies.iter().all(|b| b.len() == 4096));
    let all = records(&api, ADMIN, "/audit/retrievals", 20).await;
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|r| r["outcome"] == "complete"));
}

/// A tenant holds at most half the retrieval queue's places: its downloads that never end
/// (a client that stops reading) cannot stall another tenant's reads; its own read past its
/// share waits the configured time, then is refused with 429, and is not served unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_stalled_downloads_cannot_stall_anothers_reads() {
    let db = TestDb::new().await;
    let api = Api::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", ALL_TOKENS),
            ("ARTIFACTSTORE_RETRIEVAL_QUEUE", "4"),
            ("ARTIFACTSTORE_RETRIEVAL_WAIT_SECONDS", "1"),
        ],
    );
    let mut files = Vec::new();
    for (writer, size) in [(WRITER, 32 << 20), ("globex-writer-token", 4096)] {
        let package = api
            .create(writer, json!({"producer": "ci", "subject": "share"}))
            .await;
        let id = package["id"].as_str().unwrap().to_owned();
        let file: Value = api
            .put(writer, &id, "f.bin", &random_bytes(size, 3))
            .await
            .json()
            .await
            .unwrap();
        files.push(file);
    }
    let download = |token: &'static str, file: &Value| {
        let url = api.url(&format!("/files/{}/download", file["id"].as_str().unwrap()));
        api.http.get(url).bearer_auth(token).send()
    };
    // Acme's two downloads of 32 MiB, never read: they hold acme's whole share.
    let stalled = [
        download(READER, &files[0]).await.unwrap(),
        download(READER, &files[0]).await.unwrap(),
    ];
    assert!(stalled.iter().all(|r| r.status() == StatusCode::OK));
    let started = std::time::Instant::now();
    let third = download(READER, &files[0]).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    let problem: Value = third.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("retry shortly"),
        "{problem}"
    );
    // Globex's reads go on meanwhile, at once.
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let resp = download("globex-admin-token", &files[1]).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.unwrap().len(), 4096);
        assert!(started.elapsed() < std::time::Duration::from_millis(900));
    }
    // Once acme's stalled downloads go, its reads are served again.
    drop(stalled);
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        download(READER, &files[0]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), 32 << 20);
}

/// Kept 0 days, retrieval records are off: reads are served and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_kept_zero_days_are_not_written() {
    let db = TestDb::new().await;
    let api = Api::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", ALL_TOKENS),
            ("ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS", "0"),
        ],
    );
    let package = api
        .create(WRITER, json!({"producer": "ci", "subject": "off"}))
        .await;
    let id = package["id"].as_str().unwrap().to_owned();
    let file: Value = api
        .put(WRITER, &id, "a.bin", &random_bytes(4096, 2))
        .await
        .json()
        .await
        .unwrap();
    api.finalize(WRITER, &id).await;
    assert_eq!(api.download(READER, &file).await.len(), 4096);
    let manifest = api
        .get_json(READER, format!("/packages/{id}/manifest.json"))
        .await;
    assert!(manifest["files"].is_array());
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let page = api.get_json(ADMIN, "/audit/retrievals".into()).await;
    assert_eq!(page["items"], json!([]), "{page}");
    let count: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM retrieval_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

//! Deduplication: missing-blob queries and links, within the caller's tenant.

use super::*;

#[tokio::test]
async fn dedup_queries_and_links_only_see_the_callers_tenant() {
    let db = TestDb::new().await;
    let tokens = "acme:read+write:acme-writer-token,globex:read+write:globex-rw-token";
    let api = Api {
        server: Server::start(&db, &[("ARTIFACTSTORE_TOKENS", tokens)]),
        http: Client::new(),
    };
    let data = random_bytes(5000, 3);
    let blake = format!("blake3:{}", blake3::hash(&data).to_hex());
    let sha = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
    let absent = format!("blake3:{}", "1".repeat(64));

    let p1 = api
        .create(WRITER, json!({"producer": "p", "subject": "1"}))
        .await;
    let id1 = p1["id"].as_str().unwrap();
    assert_eq!(
        api.put(WRITER, id1, "a.bin", &data).await.status(),
        StatusCode::CREATED
    );

    let missing = |token: &'static str, addrs: Vec<String>| {
        let http = api.http.clone();
        let url = api.url("/blobs/missing");
        async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"content_addresses": addrs}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()["missing"].clone()
        }
    };
    assert_eq!(
        missing(WRITER, vec![blake.clone(), sha.clone(), absent.clone()]).await,
        json!([absent])
    );
    // globex does not hold acme's bytes, and is told so: nothing leaks.
    assert_eq!(
        missing("globex-rw-token", vec![blake.clone(), sha.clone()]).await,
        json!([blake, sha])
    );
    let bad = api
        .http
        .post(api.url("/blobs/missing"))
        .bearer_auth(WRITER)
        .json(&json!({"content_addresses": ["BLAKE3:00"]}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400).await; // fails the schema pattern

    // Link into a second package without sending bytes; by either address.
    let p2 = api
        .create(WRITER, json!({"producer": "p", "subject": "2"}))
        .await;
    let id2 = p2["id"].as_str().unwrap();
    for (path, addr) in [
        ("linked-by-blake3.bin", &blake),
        ("linked-by-sha256.bin", &sha),
    ] {
        let resp = api
            .http
            .post(api.url(&format!("/packages/{id2}/links")))
            .bearer_auth(WRITER)
            .json(&json!({"relative_path": path, "content_address": addr}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{:?}",
            resp.text().await
        );
        let file: Value = resp.json().await.unwrap();
        assert_eq!(api.download(WRITER, &file).await, data.as_slice());
    }
    // globex cannot link acme's bytes, nor unknown ones.
    let p3 = api
        .create("globex-rw-token", json!({"producer": "p", "subject": "3"}))
        .await;
    let id3 = p3["id"].as_str().unwrap();
    let resp = api
        .http
        .post(api.url(&format!("/packages/{id3}/links")))
        .bearer_auth("globex-rw-token")
        .json(&json!({"relative_path": "x", "content_address": blake}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404).await;
    let resp = api
        .http
        .post(api.url(&format!("/packages/{id2}/links")))
        .bearer_auth(WRITER)
        .json(&json!({"relative_path": "y", "content_address": absent}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_links_add_all_or_nothing_and_name_the_bad_link() {
    let db = TestDb::new().await;
    let tokens = "acme:read+write:acme-writer-token,globex:read+write:globex-rw-token";
    let api = Api {
        server: Server::start(
            &db,
            &[
                ("ARTIFACTSTORE_TOKENS", tokens),
                ("ARTIFACTSTORE_MAX_FILES_PER_PACKAGE", "5"),
            ],
        ),
        http: Client::new(),
    };
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(3000 + i, i as u64)).collect();
    let address = |b: &[u8]| format!("blake3:{}", blake3::hash(b).to_hex());
    let source = api
        .create(WRITER, json!({"producer": "p", "subject": "src"}))
        .await;
    let src = source["id"].as_str().unwrap();
    for (i, b) in blobs.iter().enumerate() {
        assert_eq!(
            api.put(WRITER, src, &format!("f{i}"), b).await.status(),
            StatusCode::CREATED
        );
    }
    let target = api
        .create(WRITER, json!({"producer": "p", "subject": "dst"}))
        .await;
    let dst = target["id"].as_str().unwrap().to_owned();
    let batch = |token: &'static str, links: Value| {
        let (http, url) = (
            api.http.clone(),
            api.url(&format!("/packages/{dst}/links/batch")),
        );
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({ "links": links }))
                .send()
                .await
                .unwrap()
        }
    };
    let files_in = |id: String| {
        let (http, url) = (api.http.clone(), api.url(&format!("/packages/{id}")));
        async move {
            let p: Value = http
                .get(url)
                .bearer_auth(WRITER)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            p["files"].as_array().unwrap().len()
        }
    };
    let absent = format!("blake3:{}", "2".repeat(64));
    // One unknown address among good ones: 404 naming it, and nothing is added.
    let resp = batch(
        WRITER,
        json!([
            {"relative_path": "a", "content_address": address(&blobs[0])},
            {"relative_path": "b", "content_address": absent},
        ]),
    )
    .await;
    let problem = assert_problem(resp, 404).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("links[1] (`b`)"),
        "{problem}"
    );
    assert_eq!(files_in(dst.clone()).await, 0);
    // The same path twice, a bad path: 422 / 400, nothing added.
    let same = json!([
        {"relative_path": "a", "content_address": address(&blobs[0])},
        {"relative_path": "a", "content_address": address(&blobs[1])},
    ]);
    assert_problem(batch(WRITER, same).await, 422).await;
    let traversal = json!([{"relative_path": "../x", "content_address": address(&blobs[0])}]);
    let problem = assert_problem(batch(WRITER, traversal).await, 422).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("links[0]"),
        "{problem}"
    );
    assert_problem(batch(WRITER, json!([])).await, 400).await;
    // Another tenant's bytes are unknown to globex (and its package is not visible either).
    let resp = batch(
        "globex-rw-token",
        json!([{"relative_path": "a", "content_address": address(&blobs[0])}]),
    )
    .await;
    assert_problem(resp, 404).await;

    // All good: every file added in one transaction, in request order, downloadable.
    let links: Vec<Value> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| json!({"relative_path": format!("dir/{i}.bin"), "content_address": address(b), "media_type": "application/x-test"}))
        .collect();
    let resp = batch(WRITER, json!(links)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let added: Value = resp.json().await.unwrap();
    let added = added["files"].as_array().unwrap().clone();
    assert_eq!(added.len(), 3);
    for (i, file) in added.iter().enumerate() {
        assert_eq!(file["relative_path"], format!("dir/{i}.bin"));
        assert_eq!(file["media_type"], "application/x-test");
        assert_eq!(api.download(WRITER, file).await, blobs[i].as_slice());
    }
    // Existing paths conflict unless replaced; the file limit counts the whole batch.
    let again = json!([{"relative_path": "dir/0.bin", "content_address": address(&blobs[1])}]);
    assert_problem(batch(WRITER, again).await, 409).await;
    let replace = json!([{"relative_path": "dir/0.bin", "content_address": address(&blobs[1]), "replace": true}]);
    assert_eq!(batch(WRITER, replace).await.status(), StatusCode::CREATED);
    let three_more: Vec<Value> = (0..3)
        .map(|i| json!({"relative_path": format!("more/{i}"), "content_address": address(&blobs[0])}))
        .collect();
    assert_problem(batch(WRITER, json!(three_more)).await, 413).await;
    assert_eq!(files_in(dst.clone()).await, 3);
    // One event per file, and replay agrees.
    let client = db.client().await;
    let ingested: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'v1.file.ingested' AND payload IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ingested, 3 + 3 + 1);
    let pool = artifactstore::db::pool(&db.url, 2).unwrap();
    let check = artifactstore::events::replay(&pool, true).await.unwrap();
    assert_eq!(check.identical, Some(true));
}

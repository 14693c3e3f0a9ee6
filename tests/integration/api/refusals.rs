//! Bad input of every kind: a clean problem, nothing kept, and the answer always arrives.

use super::*;

#[tokio::test]
async fn every_bad_input_is_a_clean_problem_and_nothing_is_kept() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[("ARTIFACTSTORE_MAX_FILE_SIZE", "100KiB")]);
    let package = api
        .create(WRITER, json!({"producer": "p", "subject": "s"}))
        .await;
    let id = package["id"].as_str().unwrap();
    let http = &api.http;
    let files = |path: &str| format!("/packages/{id}/files/{path}");
    let x = || Sent::Bytes(b"x".to_vec());
    let wrong_digest = format!("sha256:{}", "0".repeat(64));
    let unknown = uuid::Uuid::now_v7();

    // An upload session, which only a writer may see.
    let resp = http
        .post(api.url("/uploads"))
        .bearer_auth(WRITER)
        .json(&json!({"package_id": id, "relative_path": "s.bin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let upload = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut cases = vec![
        refused(
            "read scope reads a session",
            "GET",
            format!("/uploads/{upload}"),
            Some(READER),
            Sent::Nothing,
            403,
        ),
        // Auth: 401 without or with a wrong token, 403 with too small a scope; another
        // tenant's package is not found, even with a scope that would let it write.
        refused("no token", "GET", "/packages", None, Sent::Nothing, 401),
        refused(
            "wrong token",
            "GET",
            "/packages",
            Some("wrong-token-x"),
            Sent::Nothing,
            401,
        ),
        refused(
            "read scope writes",
            "PUT",
            files("x"),
            Some(READER),
            x(),
            403,
        ),
        refused(
            "other tenant reads",
            "GET",
            format!("/packages/{id}"),
            Some(OTHER),
            Sent::Nothing,
            404,
        ),
        refused(
            "other tenant writes",
            "PUT",
            files("x"),
            Some(OTHER),
            x(),
            404,
        ),
        // Malformed input: 400.
        refused(
            "bad id",
            "GET",
            "/packages/not-a-uuid",
            Some(READER),
            Sent::Nothing,
            400,
        ),
        refused(
            "truncated JSON",
            "POST",
            "/packages",
            Some(WRITER),
            Sent::Raw("application/json", "{\"producer\":"),
            400,
        ),
        refused(
            "wrong JSON type",
            "POST",
            "/packages",
            Some(WRITER),
            Sent::Json(json!({"producer": 5, "subject": "s"})),
            400,
        ),
        refused(
            "limit 0",
            "GET",
            "/packages?limit=0",
            Some(READER),
            Sent::Nothing,
            400,
        ),
        // Invalid values: 422.
        refused(
            "bad cursor",
            "GET",
            "/packages?cursor=zzz",
            Some(READER),
            Sent::Nothing,
            422,
        ),
        refused(
            "unknown retention class",
            "POST",
            "/packages",
            Some(WRITER),
            Sent::Json(json!({"producer": "p", "subject": "s", "retention_class": "forever"})),
            422,
        ),
        refused(
            "bad metadata key",
            "POST",
            "/packages",
            Some(WRITER),
            Sent::Json(json!({"producer": "p", "subject": "s", "metadata": {"bad key": "v"}})),
            422,
        ),
        refused(
            "unknown digest algorithm",
            "PUT",
            format!("{}?expected_digest=md5:abc", files("ok.bin")),
            Some(WRITER),
            x(),
            422,
        ),
        refused(
            "wrong digest",
            "PUT",
            format!("{}?expected_digest={wrong_digest}", files("ok.bin")),
            Some(WRITER),
            x(),
            422,
        ),
        // Too large, declared up front: refused before the body is stored (a body this size
        // is drained so the answer arrives).
        refused(
            "over the file size",
            "PUT",
            files("big.bin"),
            Some(WRITER),
            Sent::Bytes(random_bytes(200 * 1024, 1)),
            413,
        ),
        // Unknown ids, routes and methods.
        refused(
            "unknown package",
            "GET",
            format!("/packages/{unknown}"),
            Some(READER),
            Sent::Nothing,
            404,
        ),
        refused(
            "unknown file",
            "GET",
            format!("/files/{unknown}/download"),
            Some(READER),
            Sent::Nothing,
            404,
        ),
        refused("unknown route", "GET", "/nope", None, Sent::Nothing, 404),
        refused(
            "wrong method",
            "DELETE",
            "/packages",
            Some(WRITER),
            Sent::Nothing,
            405,
        ),
    ];
    for bad in ["..%2Fescape", "a%2F..%2Fb", "a%5Cb", "a%00b"] {
        cases.push(refused(
            "path escapes",
            "PUT",
            files(bad),
            Some(WRITER),
            x(),
            422,
        ));
    }
    let problems = api.refuse_all(cases).await;
    assert!(
        problems
            .iter()
            .any(|p| p["detail"].as_str().unwrap().contains("digest mismatch")),
        "the wrong digest is named"
    );

    // The right digest is accepted.
    let right = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"x")));
    let resp = api
        .http
        .put(api.url(&format!("{}?expected_digest={right}", files("ok.bin"))))
        .bearer_auth(WRITER)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Too large, discovered while streaming: 413 as well.
    let stream = futures::stream::iter(
        (0..30).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 8192]))),
    );
    let resp = http
        .put(api.url(&files("chunked.bin")))
        .bearer_auth(WRITER)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413).await;

    // The path is taken (409) unless the upload replaces it.
    api.refuse_all(vec![refused(
        "path taken",
        "PUT",
        files("ok.bin"),
        Some(WRITER),
        Sent::Bytes(b"again".to_vec()),
        409,
    )])
    .await;
    let resp = http
        .put(api.url(&format!("{}?replace=true", files("ok.bin"))))
        .bearer_auth(WRITER)
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // No manifest before finalize (404 saying why); after it, nothing changes the package.
    let manifest = format!("/packages/{id}/manifest");
    let finalize = format!("/packages/{id}/finalize");
    let problems = api
        .refuse_all(vec![refused(
            "manifest of an open package",
            "GET",
            manifest,
            Some(READER),
            Sent::Nothing,
            404,
        )])
        .await;
    assert!(
        problems[0]["detail"].as_str().unwrap().contains("finalize"),
        "{}",
        problems[0]
    );
    let resp = http
        .post(api.url(&finalize))
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    api.refuse_all(vec![
        refused(
            "finalized twice",
            "POST",
            finalize,
            Some(WRITER),
            Sent::Nothing,
            409,
        ),
        refused(
            "file after finalize",
            "PUT",
            files("late.bin"),
            Some(WRITER),
            x(),
            409,
        ),
    ])
    .await;

    // Nothing half-written: exactly the accepted files exist, and no staging data is left.
    let detail: Value = http
        .get(api.url(&format!("/packages/{id}")))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["file_count"], 1);
    assert_eq!(detail["total_size"], 5);
    let staging = api.server.data.join("blobs/.staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_json_bodies_are_refused_whole_and_nothing_is_created() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_MAX_JSON_BODY", "64KiB")]);
    let http = Client::new();
    let big = json!({"producer": "p", "subject": "s", "metadata": {"blob": "x".repeat(100_000)}});
    // Declared too long: 413 at once.
    let resp = http
        .post(server.url("/packages"))
        .json(&big)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(resp, 413).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("65536"),
        "{problem}"
    );
    // No declared length (chunked): refused once it passes the limit, the same way.
    let bytes = serde_json::to_vec(&big).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let resp = http
        .post(server.url("/packages"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413).await;
    // Nothing was created; a body under the limit works.
    let list: Value = http
        .get(server.url("/packages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let resp = http
        .post(server.url("/packages"))
        .json(&json!({"producer": "p", "subject": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

/// Refusals of requests with bodies must reach the client: the server drains the unread body
/// (bounded) before closing, or the kernel's reset could swallow the problem response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_streamed_bodies_always_arrive() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[]);
    let package = api
        .create(WRITER, json!({"producer": "p", "subject": "s"}))
        .await;
    let id = package["id"].as_str().unwrap();
    api.http
        .post(api.url(&format!("/packages/{id}/finalize")))
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap();
    let data = random_bytes(256 * 1024, 5);
    for i in 0..40 {
        let (token, status) = if i % 2 == 0 {
            ("not-a-token", 401)
        } else {
            (WRITER, 409)
        };
        let resp = api
            .http
            .put(api.url(&format!("/packages/{id}/files/f{i}")))
            .bearer_auth(token)
            .body(data.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: the refusal was lost: {e}"));
        assert_problem(resp, status).await;
    }
}

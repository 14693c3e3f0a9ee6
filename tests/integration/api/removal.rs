//! `DELETE /packages/{id}/files/{path}` and `DELETE /packages/{id}`: a file out of an open
//! package, an open package abandoned, a finalized one withdrawn; what stays (the record, the
//! manifest, bytes other files name) and what goes (the files, their unshared bytes, usage).

use super::*;

const ADMIN: &str = "acme-admin-token";
const ALL_TOKENS: &str = "acme:read+write:acme-writer-token,acme:read:acme-reader-token,\
    globex:write:globex-writer-token,acme:admin:acme-admin-token";

fn start(db: &TestDb) -> Api {
    Api::start(db, &[("ARTIFACTSTORE_TOKENS", ALL_TOKENS)])
}

async fn delete(api: &Api, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = api.http.delete(api.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// Whether the blob of these bytes is unreferenced (no file names it) in the views.
async fn unreferenced(db: &TestDb, data: &[u8]) -> bool {
    db.client()
        .await
        .query_one(
            "SELECT unreferenced_since IS NOT NULL FROM blobs WHERE blake3 = $1",
            &[&blake3::hash(data).as_bytes().as_slice()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_leaves_an_open_package() {
    let db = TestDb::new().await;
    let api = start(&db);
    let package = api
        .create(WRITER, json!({"producer": "ci", "subject": "rm"}))
        .await;
    let id = package["id"].as_str().unwrap().to_owned();
    let other = api
        .create(WRITER, json!({"producer": "ci", "subject": "keeps"}))
        .await;
    let other = other["id"].as_str().unwrap().to_owned();
    let (shared, own) = (random_bytes(5000, 1), random_bytes(7000, 2));
    for (pkg, path, data) in [
        (&id, "dir/shared.bin", &shared),
        (&id, "dir/own.bin", &own),
        (&other, "shared.bin", &shared),
    ] {
        assert_eq!(
            api.put(WRITER, pkg, path, data).await.status(),
            StatusCode::CREATED
        );
    }

    // Refusals change nothing.
    for (what, token, path, status) in [
        (
            "a reader",
            READER,
            format!("/packages/{id}/files/dir/own.bin"),
            403,
        ),
        (
            "another tenant",
            OTHER,
            format!("/packages/{id}/files/dir/own.bin"),
            404,
        ),
        (
            "an absent path",
            WRITER,
            format!("/packages/{id}/files/dir/none.bin"),
            404,
        ),
        (
            "a dot segment",
            WRITER,
            format!("/packages/{id}/files/dir%2F..%2Fown.bin"),
            422,
        ),
    ] {
        let resp = delete(&api, token, &path, None).await;
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_problem(resp, status).await;
    }

    // A legal hold keeps the files of an open package too.
    let hold = |method: reqwest::Method| {
        api.http
            .request(method, api.url(&format!("/packages/{id}/legal-hold")))
            .bearer_auth(ADMIN)
            .json(&json!({"reason": "audit"}))
            .send()
    };
    assert_eq!(
        hold(reqwest::Method::PUT).await.unwrap().status(),
        StatusCode::OK
    );
    let resp = delete(
        &api,
        WRITER,
        &format!("/packages/{id}/files/dir/own.bin"),
        None,
    )
    .await;
    let problem = assert_problem(resp, 409).await;
    assert!(problem["detail"].as_str().unwrap().contains("legal hold"));
    assert_eq!(
        hold(reqwest::Method::DELETE).await.unwrap().status(),
        StatusCode::OK
    );

    // If-Match: only the file named goes.
    let resp = api
        .http
        .delete(api.url(&format!("/packages/{id}/files/dir/own.bin")))
        .bearer_auth(WRITER)
        .header(
            "If-Match",
            format!("\"blake3:{}\"", blake3::hash(&shared).to_hex()),
        )
        .send()
        .await
        .unwrap();
    assert_problem(resp, 412).await;

    // Removed: gone from the package (its count and size), its own bytes unreferenced, the
    // shared ones still named by the other package; the path takes a new file.
    for (path, data) in [("dir/own.bin", &own), ("dir/shared.bin", &shared)] {
        let resp = api
            .http
            .delete(api.url(&format!("/packages/{id}/files/{path}")))
            .bearer_auth(WRITER)
            .header(
                "If-Match",
                format!("\"blake3:{}\"", blake3::hash(data).to_hex()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{path}");
        let again = delete(&api, WRITER, &format!("/packages/{id}/files/{path}"), None).await;
        assert_problem(again, 404).await;
    }
    let detail = api.get_json(READER, format!("/packages/{id}")).await;
    assert_eq!(detail["file_count"], 0);
    assert_eq!(detail["total_size"], 0);
    assert!(unreferenced(&db, &own).await);
    assert!(!unreferenced(&db, &shared).await);
    let resp = api.put(WRITER, &id, "dir/own.bin", b"new").await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // The log says who removed what; a finalized package's files stay.
    let events = api.get_json(READER, "/events?since=0".into()).await;
    let removed: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "v1.file.removed")
        .collect();
    assert_eq!(removed.len(), 2);
    assert_eq!(removed[0]["payload"]["relative_path"], "dir/own.bin");
    assert_eq!(removed[0]["payload"]["removed_by"], "acme-token-1");
    api.finalize(WRITER, &id).await;
    let resp = delete(
        &api,
        WRITER,
        &format!("/packages/{id}/files/dir/own.bin"),
        None,
    )
    .await;
    assert_problem(resp, 409).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_are_abandoned_or_withdrawn_and_keep_their_record() {
    let db = TestDb::new().await;
    let api = start(&db);
    let new =
        |subject: &'static str| api.create(WRITER, json!({"producer": "ci", "subject": subject}));
    let (open, finalized, held) = (new("open").await, new("final").await, new("held").await);
    let [open, finalized, held] =
        [open, finalized, held].map(|p| p["id"].as_str().unwrap().to_owned());
    let data = random_bytes(9000, 3);
    for id in [&open, &finalized, &held] {
        let resp = api.put(WRITER, id, &format!("{id}.bin"), &data).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let unique = random_bytes(4000, 4);
    assert_eq!(
        api.put(WRITER, &finalized, "unique.bin", &unique)
            .await
            .status(),
        StatusCode::CREATED
    );
    for id in [&finalized, &held] {
        api.finalize(WRITER, id).await;
    }
    let usage_before = api.get_json(READER, "/usage".into()).await;

    // No token: refused before anything is read.
    for path in [
        format!("/packages/{open}"),
        format!("/packages/{open}/files/{open}.bin"),
    ] {
        let resp = api.http.delete(api.url(&path)).send().await.unwrap();
        assert_problem(resp, 401).await;
    }

    // Malformed bodies and missing scopes refuse before anything changes.
    let url = |id: &str| format!("/packages/{id}");
    for (what, token, body, status) in [
        ("a reader", READER, None, 403),
        ("another tenant", OTHER, None, 404),
        (
            "an unknown member",
            WRITER,
            Some(json!({"reson": "typo"})),
            400,
        ),
        (
            "a reason that is not text",
            WRITER,
            Some(json!({"reason": 5})),
            400,
        ),
        ("an empty reason", WRITER, Some(json!({"reason": ""})), 422),
    ] {
        let resp = delete(&api, token, &url(&open), body).await;
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_problem(resp, status).await;
    }
    let resp = api
        .http
        .delete(api.url(&url(&open)))
        .bearer_auth(WRITER)
        .header("content-type", "text/plain")
        .body("because")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 415).await;

    // An upload session into the open package, one chunk in.
    let session: Value = api
        .http
        .post(api.url("/uploads"))
        .bearer_auth(WRITER)
        .json(&json!({"package_id": open, "relative_path": "big.bin", "size": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = format!("/uploads/{}", session["id"].as_str().unwrap());
    let chunk = |range: &'static str| {
        api.http
            .patch(api.url(&upload))
            .bearer_auth(WRITER)
            .header("content-range", range)
            .body(vec![7u8; 5])
            .send()
    };
    assert!(chunk("bytes 0-4/10").await.unwrap().status().is_success());

    // An open package: abandoned by its writer, at once, with the reason kept.
    let resp = delete(
        &api,
        WRITER,
        &url(&open),
        Some(json!({"reason": "broken build"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let abandoned: Value = resp.json().await.unwrap();
    assert_eq!(abandoned["status"], "abandoned");
    assert_eq!(abandoned["file_count"], 0);
    assert_eq!(abandoned["removal"]["by"], "acme-token-1");
    assert_eq!(abandoned["removal"]["reason"], "broken build");

    // Its upload session ended with it: no more chunks.
    assert_problem(chunk("bytes 5-9/10").await.unwrap(), 404).await;

    // A finalized one: withdrawing takes an admin; a held one is refused until released.
    let resp = delete(&api, WRITER, &url(&finalized), None).await;
    assert_problem(resp, 403).await;
    let resp = api
        .http
        .put(api.url(&format!("/packages/{held}/legal-hold")))
        .bearer_auth(ADMIN)
        .json(&json!({"reason": "litigation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let problem = assert_problem(delete(&api, ADMIN, &url(&held), None).await, 409).await;
    assert!(problem["detail"].as_str().unwrap().contains("legal hold"));
    let resp = delete(
        &api,
        ADMIN,
        &url(&finalized),
        Some(json!({"reason": "recalled"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let withdrawn: Value = resp.json().await.unwrap();
    assert_eq!(withdrawn["status"], "withdrawn");
    assert_eq!(withdrawn["removal"]["by"], "acme-token-4");

    // Gone from now on (410 saying who, when and why), a second delete too; the withdrawn
    // package's manifest stays readable, and listings show the removal.
    for (id, status, reason) in [
        (&open, "abandoned", "broken build"),
        (&finalized, "withdrawn", "recalled"),
    ] {
        let problem = assert_problem(
            api.http
                .get(api.url(&url(id)))
                .bearer_auth(READER)
                .send()
                .await
                .unwrap(),
            410,
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(status) && detail.contains(reason),
            "{detail}"
        );
        assert_problem(delete(&api, ADMIN, &url(id), None).await, 410).await;
        let resp = api.put(WRITER, id, "late.bin", b"x").await;
        assert_problem(resp, 410).await;
        let resp = api
            .http
            .get(api.url(&format!("/packages/{id}/files/{id}.bin")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        assert_problem(resp, 410).await;
    }
    let resp = api
        .http
        .get(api.url(&format!("/packages/{finalized}/manifest")))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let listed = api
        .get_json(READER, "/packages?status=withdrawn".into())
        .await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], finalized.as_str());
    assert_eq!(items[0]["removal"]["reason"], "recalled");

    // Gone, it no longer falls due: the expiry workers do not wait for it.
    let due: Option<time::OffsetDateTime> = db
        .client()
        .await
        .query_one(
            "SELECT expires_at FROM retention_state WHERE package_id = $1",
            &[&uuid::Uuid::parse_str(&finalized).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(due, None);

    // Bytes: the withdrawn package's own are unreferenced (collected after the grace); the
    // shared ones are still named by the held package. Usage drops at once.
    assert!(unreferenced(&db, &unique).await);
    assert!(!unreferenced(&db, &data).await);
    let usage = api.get_json(READER, "/usage".into()).await;
    assert_eq!(
        usage["packages"].as_u64().unwrap() + 2,
        usage_before["packages"].as_u64().unwrap(),
        "{usage}"
    );
    assert!(
        usage["logical_bytes"].as_u64().unwrap() < usage_before["logical_bytes"].as_u64().unwrap(),
        "{usage}"
    );

    // The log has both events, in order.
    let events = api.get_json(READER, "/events?since=0".into()).await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|t| t.starts_with("v1.package.a") || t.starts_with("v1.package.w"))
        .collect();
    assert_eq!(types, ["v1.package.abandoned", "v1.package.withdrawn"]);
}

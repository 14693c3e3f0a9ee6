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

/// Puts (`PUT`) or lifts (`DELETE`) a legal hold on a package, as the tenant's admin.
async fn hold(api: &Api, id: &str, method: reqwest::Method) -> StatusCode {
    api.http
        .request(method, api.url(&format!("/packages/{id}/legal-hold")))
        .bearer_auth(ADMIN)
        .json(&json!({"reason": "audit"}))
        .send()
        .await
        .unwrap()
        .status()
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

/// Under a legal hold, `dir/own.bin` (holding `own`) of the open package `id` is not replaced
/// by a PUT with `?replace=true` or `If-Match`, a multipart upload, or a link.
async fn held_files_stay(api: &Api, id: &str, own: &[u8], other: &[u8]) {
    let url = api.url(&format!("/packages/{id}/files/dir/own.bin"));
    let etag = format!("\"blake3:{}\"", blake3::hash(own).to_hex());
    let by_query = api.http.put(format!("{url}?replace=true"));
    let by_etag = api.http.put(&url).header("If-Match", &etag);
    let form = reqwest::multipart::Form::new()
        .text("relative_path", "dir/own.bin")
        .part("file", reqwest::multipart::Part::bytes(other.to_vec()));
    let by_form = api
        .http
        .post(api.url(&format!("/packages/{id}/files?replace=true")))
        .multipart(form);
    let address = format!("blake3:{}", blake3::hash(other).to_hex());
    let by_link = api
        .http
        .post(api.url(&format!("/packages/{id}/links")))
        .json(
            &json!({"relative_path": "dir/own.bin", "content_address": address, "replace": true}),
        );
    for (how, request) in [
        ("?replace=true", by_query.body(other.to_vec())),
        ("If-Match", by_etag.body(other.to_vec())),
        ("a form", by_form),
        ("a link", by_link),
    ] {
        let resp = request.bearer_auth(WRITER).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 409, "{how}");
        let problem = assert_problem(resp, 409).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("legal hold"),
            "{how}"
        );
    }
    let resp = api.http.get(&url).bearer_auth(WRITER).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), own);
    let added = api.put(WRITER, id, "dir/new.bin", other).await;
    assert_eq!(added.status(), StatusCode::CREATED);
    let resp = delete(
        api,
        WRITER,
        &format!("/packages/{id}/files/dir/new.bin"),
        None,
    )
    .await;
    assert_eq!(
        resp.status().as_u16(),
        409,
        "a file added under the hold is kept too"
    );
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
    assert_eq!(hold(&api, &id, reqwest::Method::PUT).await, StatusCode::OK);
    let resp = delete(
        &api,
        WRITER,
        &format!("/packages/{id}/files/dir/own.bin"),
        None,
    )
    .await;
    let problem = assert_problem(resp, 409).await;
    assert!(problem["detail"].as_str().unwrap().contains("legal hold"));
    // Nor may one be replaced, whichever way is asked; a new path is still welcome.
    held_files_stay(&api, &id, &own, &shared).await;
    assert_eq!(
        hold(&api, &id, reqwest::Method::DELETE).await,
        StatusCode::OK
    );
    let resp = delete(
        &api,
        WRITER,
        &format!("/packages/{id}/files/dir/new.bin"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

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
    assert_eq!(removed.len(), 3);
    assert_eq!(removed[0]["payload"]["relative_path"], "dir/new.bin");
    assert_eq!(removed[1]["payload"]["relative_path"], "dir/own.bin");
    assert_eq!(removed[1]["payload"]["removed_by"], "acme-token-1");
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
    assert_eq!(
        hold(&api, &held, reqwest::Method::PUT).await,
        StatusCode::OK
    );
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

/// A hold set while a replacement's body is on its way still keeps the file: the write's
/// early check passed before the hold, its commit (in a batch for a small file, alone for a
/// large one) sees it. `Expect: 100-continue` tells when the server began reading the body,
/// that is when its early check was behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_set_while_a_replacement_streams_keeps_the_file() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let api = start(&db);
    for (size, seed) in [(7_000, 3), (3 << 20, 4)] {
        let id = api
            .create(WRITER, json!({"producer": "ci", "subject": "held"}))
            .await;
        let id = id["id"].as_str().unwrap().to_owned();
        let (old, new) = (random_bytes(size, seed), random_bytes(size, seed + 10));
        assert_eq!(
            api.put(WRITER, &id, "f.bin", &old).await.status(),
            StatusCode::CREATED
        );
        let addr = api.url("").trim_start_matches("http://").to_owned();
        let addr = addr.trim_end_matches('/').to_owned();
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "PUT /packages/{id}/files/f.bin?replace=true HTTP/1.1\r\nHost: test\r\n\
             Authorization: Bearer {WRITER}\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            new.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut interim = [0u8; 25];
        socket.read_exact(&mut interim).await.unwrap();
        assert!(
            interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&interim)
        );
        assert_eq!(hold(&api, &id, reqwest::Method::PUT).await, StatusCode::OK);
        socket.write_all(&new).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = socket.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 409"), "{size} bytes: {answer}");
        assert!(answer.contains("legal hold"), "{size} bytes: {answer}");
        let resp = api
            .http
            .get(api.url(&format!("/packages/{id}/files/f.bin")))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.bytes().await.unwrap().as_ref(), old.as_slice());
    }
}

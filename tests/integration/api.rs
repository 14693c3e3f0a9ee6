//! The HTTP API through the real server on a random port.

use crate::harness::{TestDb, random_bytes};
use crate::server::Server;
use base64::Engine as _;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

const WRITER: &str = "acme-writer-token";
const READER: &str = "acme-reader-token";
const OTHER: &str = "globex-writer-token";
const TOKENS: &str = "acme:read+write:acme-writer-token,acme:read:acme-reader-token,globex:write:globex-writer-token";

struct Api {
    server: Server,
    http: Client,
}

impl Api {
    fn start(db: &TestDb, extra: &[(&str, &str)]) -> Self {
        let mut env = vec![("ARTIFACTSTORE_TOKENS", TOKENS)];
        env.extend_from_slice(extra);
        Api {
            server: Server::start(db, &env),
            http: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn create(&self, token: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url("/packages"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{:?}",
            resp.text().await
        );
        resp.json().await.unwrap()
    }

    async fn put(&self, token: &str, package: &str, path: &str, data: &[u8]) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/packages/{package}/files/{path}")))
            .bearer_auth(token)
            .body(data.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// The whole body of a file's download.
    async fn download(&self, token: &str, file: &Value) -> Vec<u8> {
        let id = file["id"].as_str().unwrap();
        let resp = self
            .http
            .get(self.url(&format!("/files/{id}/download")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.bytes().await.unwrap().to_vec()
    }
}

async fn assert_problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    for key in ["type", "title", "detail", "instance"] {
        assert!(body[key].is_string(), "problem lacks {key}: {body}");
    }
    assert_eq!(body["status"], status);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_files_ingested_finalized_downloaded_and_verified() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[]);
    let package = api
        .create(
            WRITER,
            json!({"producer": "ci", "subject": "release 2", "metadata": {"git.sha": "f00"}}),
        )
        .await;
    let id = package["id"].as_str().unwrap().to_owned();
    assert_eq!(package["status"], "open");
    assert_eq!(package["tenant"], "acme");

    let mut files = Vec::new();
    for i in 0..50usize {
        let data = random_bytes(i * 997 + (i % 7) * 65_536, i as u64);
        let path = format!("dir{}/sub/file-{i}.bin", i % 5);
        let resp = if i % 2 == 0 {
            api.put(WRITER, &id, &path, &data).await
        } else {
            let form = reqwest::multipart::Form::new()
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(data.clone())
                        .file_name("ignored.bin")
                        .mime_str("application/x-test")
                        .unwrap(),
                )
                .text("relative_path", path.clone());
            api.http
                .post(api.url(&format!("/packages/{id}/files")))
                .bearer_auth(WRITER)
                .multipart(form)
                .send()
                .await
                .unwrap()
        };
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{path}: {:?}",
            resp.text().await
        );
        assert!(
            resp.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("/files/")
        );
        let file: Value = resp.json().await.unwrap();
        assert_eq!(file["relative_path"], path);
        assert_eq!(
            file["media_type"],
            if i % 2 == 0 {
                "application/octet-stream"
            } else {
                "application/x-test"
            }
        );
        files.push((file, data));
    }

    let finalized: Value = api
        .http
        .post(api.url(&format!("/packages/{id}/finalize")))
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(finalized["status"], "finalized");
    assert_eq!(finalized["file_count"], 50);
    let digest = finalized["manifest_digest"].as_str().unwrap().to_owned();

    // Manifest: CBOR bytes hash to the digest; the ETag is the digest; JSON is the JCS form.
    let resp = api
        .http
        .get(api.url(&format!("/packages/{id}/manifest")))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/cbor");
    assert_eq!(
        resp.headers()["etag"].to_str().unwrap(),
        format!("\"{digest}\"")
    );
    let cbor = resp.bytes().await.unwrap();
    assert_eq!(format!("blake3:{}", blake3::hash(&cbor).to_hex()), digest);
    let manifest = artifactstore::Manifest::from_cbor(&cbor).unwrap();
    assert_eq!(manifest.files.len(), 50);
    let resp = api
        .http
        .get(api.url(&format!("/packages/{id}/manifest.json")))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["etag"].to_str().unwrap(),
        format!("\"{digest}\"")
    );
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        artifactstore::Manifest::jcs(&cbor).unwrap().as_slice()
    );
    let resp = api
        .http
        .get(api.url(&format!("/packages/{id}/manifest")))
        .bearer_auth(READER)
        .header("If-None-Match", format!("\"{digest}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    // The package lists its files sorted.
    let detail: Value = api
        .http
        .get(api.url(&format!("/packages/{id}")))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<_> = detail["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["relative_path"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);

    // Every file downloads with both digests right; headers as promised; ranges work.
    for (file, data) in &files {
        let fid = file["id"].as_str().unwrap();
        let meta: Value = api
            .http
            .get(api.url(&format!("/files/{fid}")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let blake = meta["digests"]["blake3"].as_str().unwrap();
        let sha = meta["digests"]["sha256"].as_str().unwrap();
        assert_eq!(meta["content_address"], format!("blake3:{blake}"));
        let resp = api
            .http
            .get(api.url(&format!("/files/{fid}/download")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers().clone();
        assert_eq!(h["etag"].to_str().unwrap(), format!("\"blake3:{blake}\""));
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(
            h["content-length"].to_str().unwrap(),
            data.len().to_string()
        );
        assert_eq!(h["content-type"], meta["media_type"].as_str().unwrap());
        let sha_b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(sha).unwrap());
        assert_eq!(
            h["repr-digest"].to_str().unwrap(),
            format!("sha-256=:{sha_b64}:")
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.as_ref(), data.as_slice());
        assert_eq!(blake3::hash(&body).to_hex().as_str(), blake);
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), sha);
        if data.len() > 100 {
            let n = data.len();
            for (range, want) in [
                ("bytes=0-0".to_string(), &data[0..1]),
                (format!("bytes=10-{}", n - 1), &data[10..]),
                (format!("bytes={}-", n - 7), &data[n - 7..]),
                ("bytes=-9".to_string(), &data[n - 9..]),
                (format!("bytes=5-{}", n + 1000), &data[5..]),
            ] {
                let resp = api
                    .http
                    .get(api.url(&format!("/files/{fid}/download")))
                    .bearer_auth(READER)
                    .header("Range", &range)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
                let cr = resp.headers()["content-range"].to_str().unwrap().to_owned();
                assert!(cr.ends_with(&format!("/{n}")), "{cr}");
                assert_eq!(resp.bytes().await.unwrap().as_ref(), want, "{range}");
            }
            let resp = api
                .http
                .get(api.url(&format!("/files/{fid}/download")))
                .bearer_auth(READER)
                .header("Range", format!("bytes={n}-"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.headers()["content-range"].to_str().unwrap(),
                format!("bytes */{n}")
            );
            assert_problem(resp, 416).await;
            for ignored in ["bytes=oops", "items=0-1", "bytes=0-1,5-9"] {
                let resp = api
                    .http
                    .get(api.url(&format!("/files/{fid}/download")))
                    .bearer_auth(READER)
                    .header("Range", ignored)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{ignored}");
                assert_eq!(resp.bytes().await.unwrap().len(), n);
            }
        }
    }
}

#[tokio::test]
async fn every_bad_input_is_a_clean_problem_and_nothing_is_kept() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[("ARTIFACTSTORE_MAX_FILE_SIZE", "100KiB")]);
    let package = api
        .create(WRITER, json!({"producer": "p", "subject": "s"}))
        .await;
    let id = package["id"].as_str().unwrap();
    let http = &api.http;

    // Auth: 401 without or with a wrong token, 403 with too small a scope.
    assert_problem(http.get(api.url("/packages")).send().await.unwrap(), 401).await;
    assert_problem(
        http.get(api.url("/packages"))
            .bearer_auth("wrong-token-x")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_problem(api.put(READER, id, "x", b"x").await, 403).await;
    // Another tenant sees nothing: 404.
    assert_problem(
        http.get(api.url(&format!("/packages/{id}")))
            .bearer_auth(OTHER)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await; // write implies read; still another tenant's
    assert_problem(api.put(OTHER, id, "x", b"x").await, 404).await;

    // Malformed input: 400.
    assert_problem(
        http.get(api.url("/packages/not-a-uuid"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        http.post(api.url("/packages"))
            .bearer_auth(WRITER)
            .header("content-type", "application/json")
            .body("{\"producer\":")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        http.post(api.url("/packages"))
            .bearer_auth(WRITER)
            .json(&json!({"producer": 5, "subject": "s"}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        http.get(api.url("/packages?limit=0"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        http.get(api.url("/packages?cursor=zzz"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;

    // Invalid values: 422.
    assert_problem(
        http.post(api.url("/packages"))
            .bearer_auth(WRITER)
            .json(&json!({"producer": "p", "subject": "s", "retention_class": "forever"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_problem(
        http.post(api.url("/packages"))
            .bearer_auth(WRITER)
            .json(&json!({"producer": "p", "subject": "s", "metadata": {"bad key": "v"}}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    for bad in ["..%2Fescape", "a%2F..%2Fb", "a%5Cb", "a%00b"] {
        assert_problem(api.put(WRITER, id, bad, b"x").await, 422).await;
    }
    let resp = http
        .put(api.url(&format!(
            "/packages/{id}/files/ok.bin?expected_digest=md5:abc"
        )))
        .bearer_auth(WRITER)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 422).await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let resp = http
        .put(api.url(&format!(
            "/packages/{id}/files/ok.bin?expected_digest={wrong}"
        )))
        .bearer_auth(WRITER)
        .body("x")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(resp, 422).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("digest mismatch"),
        "{problem}"
    );
    // The right digest is accepted.
    let right = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"x")));
    let resp = http
        .put(api.url(&format!(
            "/packages/{id}/files/ok.bin?expected_digest={right}"
        )))
        .bearer_auth(WRITER)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Too large: 413, whether declared up front or discovered while streaming. A declared
    // Content-Length over the limit is refused before the body is stored; a body this size is
    // drained so the answer arrives (bodies over the drain bound are cut off, by design).
    assert_problem(
        api.put(WRITER, id, "big.bin", &random_bytes(200 * 1024, 1))
            .await,
        413,
    )
    .await;
    let stream = futures::stream::iter(
        (0..30).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 8192]))),
    );
    let resp = http
        .put(api.url(&format!("/packages/{id}/files/chunked.bin")))
        .bearer_auth(WRITER)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413).await;

    // Conflicts: 409.
    assert_problem(api.put(WRITER, id, "ok.bin", b"again").await, 409).await;
    let resp = http
        .put(api.url(&format!("/packages/{id}/files/ok.bin?replace=true")))
        .bearer_auth(WRITER)
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Manifest before finalize: 404 saying why.
    let problem = assert_problem(
        http.get(api.url(&format!("/packages/{id}/manifest")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("finalize"),
        "{problem}"
    );
    http.post(api.url(&format!("/packages/{id}/finalize")))
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap();
    assert_problem(
        http.post(api.url(&format!("/packages/{id}/finalize")))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_problem(api.put(WRITER, id, "late.bin", b"late").await, 409).await;

    // Unknown ids, routes and methods.
    let unknown = uuid::Uuid::now_v7();
    assert_problem(
        http.get(api.url(&format!("/packages/{unknown}")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        http.get(api.url(&format!("/files/{unknown}/download")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(http.get(api.url("/nope")).send().await.unwrap(), 404).await;
    assert_problem(
        http.delete(api.url("/packages"))
            .bearer_auth(WRITER)
            .send()
            .await
            .unwrap(),
        405,
    )
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

#[tokio::test]
async fn listing_filters_metadata_and_cursor() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let p = api
            .create(WRITER, json!({"producer": if i < 3 {"a"} else {"b"}, "subject": format!("s{i}"), "metadata": {"k": format!("{}", i % 2), "x.y/z": "1"}}))
            .await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let get = |q: &'static str| {
        let url = api.url(&format!("/packages{q}"));
        let http = api.http.clone();
        async move {
            http.get(url)
                .bearer_auth(READER)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let ids_of = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let all = get("").await;
    assert_eq!(ids_of(&all), ids.iter().rev().cloned().collect::<Vec<_>>());
    assert!(all["next_cursor"].is_null());
    assert_eq!(
        ids_of(&get("?producer=a").await),
        vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    assert_eq!(
        ids_of(&get("?meta.k=1").await),
        vec![ids[3].clone(), ids[1].clone()]
    );
    assert_eq!(
        ids_of(&get("?meta.k=1&meta.x.y%2Fz=1&producer=a").await),
        vec![ids[1].clone()]
    );
    assert_eq!(
        ids_of(&get("?status=finalized").await),
        Vec::<String>::new()
    );
    let page1 = get("?limit=2").await;
    assert_eq!(ids_of(&page1).len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2: Value = api
        .http
        .get(api.url(&format!("/packages?limit=2&cursor={cursor}")))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids_of(&page2), vec![ids[2].clone(), ids[1].clone()]);
    // Another tenant lists nothing of acme's.
    let other: Value = api
        .http
        .get(api.url("/packages"))
        .bearer_auth("globex-writer-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(json!({"items": []}));
    assert!(
        other["items"]
            .as_array()
            .map(|a| a.is_empty())
            .unwrap_or(true)
    );
}

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

#[tokio::test]
async fn token_file_hashes_and_anonymous_reads() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let hash = hex::encode(sha2::Sha256::digest(b"prod-token-123"));
    std::fs::write(&file, format!("[[token]]\ntenant = \"default\"\nscopes = [\"write\"]\nsha256 = \"{hash}\"\nname = \"ci-bot\"\n")).unwrap();
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS_FILE", file.to_str().unwrap()),
            ("ARTIFACTSTORE_ANON_READ", "true"),
        ],
    );
    let http = Client::new();
    let created: Value = http
        .post(server.url("/packages"))
        .bearer_auth("prod-token-123")
        .json(&json!({"producer": "p", "subject": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let finalized: Value = http
        .post(server.url(&format!("/packages/{id}/finalize")))
        .bearer_auth("prod-token-123")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(finalized["status"], "finalized");
    // Anonymous reads work; anonymous writes do not.
    assert_eq!(
        http.get(server.url(&format!("/packages/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let manifest: Value = http
        .get(server.url(&format!("/packages/{id}/manifest.json")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["provenance"]["finalized_by"], "ci-bot");
    assert_problem(
        http.post(server.url("/packages"))
            .json(&json!({"producer": "p", "subject": "s"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // Health stays anonymous.
    assert_eq!(
        http.get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn lost_bytes_answer_a_500_problem_that_leaks_nothing() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[]);
    let package = api
        .create(WRITER, json!({"producer": "p", "subject": "s"}))
        .await;
    let id = package["id"].as_str().unwrap();
    let file: Value = api
        .put(WRITER, id, "x.bin", b"soon gone")
        .await
        .json()
        .await
        .unwrap();
    let blake = file["digests"]["blake3"].as_str().unwrap();
    let stored = api
        .server
        .data
        .join("blobs/blake3")
        .join(&blake[0..2])
        .join(&blake[2..4])
        .join(blake);
    std::fs::remove_file(stored).unwrap();
    let resp = api
        .http
        .get(api.url(&format!("/files/{}/download", file["id"].as_str().unwrap())))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(resp, 500).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        !detail.contains(blake) && !detail.contains("/"),
        "internals leaked: {detail}"
    );
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

//! A package's whole life through the HTTP API, and a stored file lost behind its back.

use super::*;

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

    // The same operation answers JSON when `Accept` prefers it (q-values weigh; CBOR wins
    // ties and `*/*`), with a weak tag; an `Accept` naming neither is 406.
    let manifest_with = |accept: &'static str| {
        api.http
            .get(api.url(&format!("/packages/{id}/manifest")))
            .bearer_auth(READER)
            .header("Accept", accept)
            .send()
    };
    let jcs = artifactstore::Manifest::jcs(&cbor).unwrap();
    for (accept, json) in [
        ("application/json", true),
        ("application/cbor;q=0.5, application/json;q=0.9", true),
        (
            "text/html, application/*;q=0.8, application/cbor;q=0.1",
            true,
        ),
        ("application/json;q=0.5, */*", false),
        ("application/json, application/cbor", false),
        ("*/*", false),
    ] {
        let resp = manifest_with(accept).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{accept}");
        assert_eq!(resp.headers()["vary"], "Accept", "{accept}");
        let (content_type, etag, body) = if json {
            (
                "application/json",
                format!("W/\"{digest}\""),
                jcs.as_slice(),
            )
        } else {
            ("application/cbor", format!("\"{digest}\""), cbor.as_ref())
        };
        assert_eq!(resp.headers()["content-type"], content_type, "{accept}");
        assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag, "{accept}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), body, "{accept}");
    }
    for accept in ["text/html", "application/json;q=0, application/cbor;q=0"] {
        let problem = assert_problem(manifest_with(accept).await.unwrap(), 406).await;
        assert!(problem["detail"].as_str().unwrap().contains("Accept"));
    }
    for tag in [format!("W/\"{digest}\""), format!("\"{digest}\"")] {
        let resp = api
            .http
            .get(api.url(&format!("/packages/{id}/manifest")))
            .bearer_auth(READER)
            .header("Accept", "application/json")
            .header("If-None-Match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            resp.headers()["etag"].to_str().unwrap(),
            format!("W/\"{digest}\"")
        );
    }

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

/// `If-Match` on a file upload: the write replaces the file at the path only if that file is
/// the one named (by its ETag, `"blake3:<hex>"`, or `*` for any); otherwise 412 and nothing
/// changes. Small files (batched commits), large ones and forms alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_replaces_only_the_file_it_names() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[]);
    let package = api
        .create(WRITER, json!({"producer": "ci", "subject": "if-match"}))
        .await;
    let id = package["id"].as_str().unwrap().to_owned();
    let put = |path: &str, data: Vec<u8>, if_match: Option<String>| {
        let mut request = api
            .http
            .put(api.url(&format!("/packages/{id}/files/{path}")))
            .bearer_auth(WRITER)
            .body(data);
        if let Some(tag) = if_match {
            request = request.header("If-Match", tag);
        }
        request.send()
    };
    let tag = |file: &Value| format!("\"{}\"", file["content_address"].as_str().unwrap());
    let at = |path: &str| {
        let path = path.to_owned();
        let package = api.get_json(READER, format!("/packages/{id}"));
        async move {
            package.await["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["relative_path"] == path.as_str())
                .cloned()
        }
    };

    for (path, size) in [("small.bin", 10_000usize), ("large.bin", (1 << 20) + 4096)] {
        // Nothing at the path: `*` and any tag fail, and nothing is added.
        let first = random_bytes(size, 1);
        for condition in ["*".to_owned(), format!("\"blake3:{}\"", "0".repeat(64))] {
            let resp = put(path, first.clone(), Some(condition)).await.unwrap();
            let problem = assert_problem(resp, 412).await;
            assert!(problem["detail"].as_str().unwrap().contains("no file"));
            assert!(at(path).await.is_none());
        }
        let resp = put(path, first.clone(), None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let original: Value = resp.json().await.unwrap();
        assert_eq!(at(path).await.unwrap()["id"], original["id"]);

        // Another file's tag, a weak tag of this one, or garbage: 412, the file unchanged.
        let second = random_bytes(size, 2);
        for condition in [
            format!("\"blake3:{}\"", blake3::hash(&second).to_hex()),
            format!("W/{}", tag(&original)),
            "not-a-tag".to_owned(),
            format!("\"sha256:{}\"", hex::encode(sha2::Sha256::digest(&first))),
        ] {
            let resp = put(path, second.clone(), Some(condition.clone()))
                .await
                .unwrap();
            assert_problem(resp, 412).await;
            assert_eq!(at(path).await.unwrap()["id"], original["id"], "{condition}");
        }

        // Its own tag (one of a list) replaces it without `replace=true`.
        let resp = put(
            path,
            second.clone(),
            Some(format!("\"blake3:{}\", {}", "1".repeat(64), tag(&original))),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let replaced: Value = resp.json().await.unwrap();
        assert_eq!(at(path).await.unwrap()["id"], replaced["id"]);
        assert_eq!(api.download(READER, &replaced).await, second);

        // The old tag no longer matches (a lost update is refused); `*` matches any file.
        let third = random_bytes(size, 3);
        let resp = put(path, third.clone(), Some(tag(&original)))
            .await
            .unwrap();
        assert_problem(resp, 412).await;
        let resp = put(path, third.clone(), Some("*".into())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let latest: Value = resp.json().await.unwrap();
        assert_eq!(api.download(READER, &latest).await, third);
    }

    // A form upload takes the header too; a mismatch refuses before its file is kept.
    let current = at("small.bin").await.unwrap();
    let form = |data: Vec<u8>| {
        reqwest::multipart::Form::new()
            .text("relative_path", "small.bin")
            .part("file", reqwest::multipart::Part::bytes(data))
    };
    let resp = api
        .http
        .post(api.url(&format!("/packages/{id}/files")))
        .bearer_auth(WRITER)
        .header("If-Match", format!("\"blake3:{}\"", "2".repeat(64)))
        .multipart(form(b"form bytes".to_vec()))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 412).await;
    assert_eq!(at("small.bin").await.unwrap()["id"], current["id"]);
    let resp = api
        .http
        .post(api.url(&format!("/packages/{id}/files")))
        .bearer_auth(WRITER)
        .header("If-Match", tag(&current))
        .multipart(form(b"form bytes".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let replaced: Value = resp.json().await.unwrap();
    assert_eq!(api.download(READER, &replaced).await, b"form bytes");

    // Racing writers naming the same file: exactly one replaces it, the others are 412.
    for (path, size) in [("small.bin", 10_000usize), ("large.bin", (1 << 20) + 4096)] {
        let current = tag(&at(path).await.unwrap());
        let answers = futures::future::join_all(
            (0..6u64).map(|i| put(path, random_bytes(size, 100 + i), Some(current.clone()))),
        )
        .await;
        let mut statuses: Vec<u16> = answers
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 412, 412, 412, 412, 412], "{path}");
    }

    // Racing plain replacements all succeed, each replacing the one committed before it.
    for (path, size) in [("small.bin", 10_000usize), ("large.bin", (1 << 20) + 4096)] {
        let answers = futures::future::join_all((0..6u64).map(|i| {
            let url = api.url(&format!("/packages/{id}/files/{path}?replace=true"));
            api.http
                .put(url)
                .bearer_auth(WRITER)
                .body(random_bytes(size, 200 + i))
                .send()
        }))
        .await;
        for answer in answers {
            assert_eq!(answer.unwrap().status(), StatusCode::CREATED, "{path}");
        }
    }

    // Without the header, a taken path is still a conflict.
    let resp = put("small.bin", b"x".to_vec(), None).await.unwrap();
    assert_problem(resp, 409).await;
}

/// `GET` and `HEAD /packages/{id}/files/{path}` answer what the download by id does: whole,
/// ranges, 304, the same headers; `curl -OJ` saves the file under its name; HEAD sends no
/// bytes. Refusals: an absent path or package, another tenant's, a bad path, no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_download_by_path_as_by_id() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[]);
    let package = api
        .create(WRITER, json!({"producer": "ci", "subject": "by-path"}))
        .await;
    let id = package["id"].as_str().unwrap().to_owned();
    let data = random_bytes(300_000, 7);
    let path = "dist/linux/résumé app.tar.gz";
    let encoded = "dist/linux/r%C3%A9sum%C3%A9%20app.tar.gz";
    let resp = api.put(WRITER, &id, encoded, &data).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["relative_path"], path);
    let by_path = api.url(&format!("/packages/{id}/files/{encoded}"));
    let by_id = api.url(&format!("/files/{}/download", file["id"].as_str().unwrap()));

    // (A problem's length varies with its `instance`, the request's path.)
    let headers_of = |resp: &reqwest::Response| {
        let problem = resp.status() == StatusCode::RANGE_NOT_SATISFIABLE;
        let mut h: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
            .filter(|(name, _)| !(problem && name.as_str() == "content-length"))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        h
    };
    for range in [
        None,
        Some("bytes=1000-1999"),
        Some("bytes=-10"),
        Some("bytes=999999-"),
    ] {
        let get = |url: &str| {
            let mut r = api.http.get(url).bearer_auth(READER);
            if let Some(range) = range {
                r = r.header("Range", range);
            }
            r.send()
        };
        let (a, b) = (get(&by_path).await.unwrap(), get(&by_id).await.unwrap());
        assert_eq!(a.status(), b.status(), "{range:?}");
        assert_eq!(headers_of(&a), headers_of(&b), "{range:?}");
        if a.status() != StatusCode::RANGE_NOT_SATISFIABLE {
            assert_eq!(
                a.bytes().await.unwrap(),
                b.bytes().await.unwrap(),
                "{range:?}"
            );
        }

        // HEAD: the GET's status and headers, no bytes.
        let mut head = api.http.head(&by_path).bearer_auth(READER);
        if let Some(range) = range {
            head = head.header("Range", range);
        }
        let head = head.send().await.unwrap();
        let get = get(&by_path).await.unwrap();
        assert_eq!(head.status(), get.status(), "{range:?}");
        assert_eq!(headers_of(&head), headers_of(&get), "{range:?}");
        assert!(head.bytes().await.unwrap().is_empty());
    }
    let etag = format!("\"{}\"", file["content_address"].as_str().unwrap());
    let resp = api
        .http
        .get(&by_path)
        .bearer_auth(READER)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    // curl, as people use it: -OJ saves the bytes under the file's name.
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "-OJ", "-H"])
        .arg(format!("Authorization: Bearer {READER}"))
        .arg(&by_path)
        .current_dir(dir.path())
        .status()
        .expect("curl runs");
    assert!(status.success());
    let saved: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(std::fs::read(dir.path().join(&saved[0])).unwrap(), data);

    // Refusals.
    let missing = format!("/packages/{id}/files/dist/none.bin");
    let stranger = format!("/packages/{}/files/{encoded}", uuid::Uuid::now_v7());
    for (what, url, token, status) in [
        ("no such path", api.url(&missing), Some(READER), 404),
        ("no such package", api.url(&stranger), Some(READER), 404),
        ("another tenant's", by_path.clone(), Some(OTHER), 404),
        ("no token", by_path.clone(), None, 401),
        (
            "a dot segment",
            api.url(&format!("/packages/{id}/files/dist%2F..%2Fx")),
            Some(READER),
            422,
        ),
        (
            "a bad id",
            api.url("/packages/nope/files/x"),
            Some(READER),
            400,
        ),
    ] {
        let mut r = api.http.get(&url);
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_problem(resp, status).await;
    }
}

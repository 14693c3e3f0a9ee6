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

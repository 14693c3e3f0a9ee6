//! Stored bytes stay what was published: the complete/PATCH race, sessions being completed, blobs
//! changed behind the registry's back, files that look like problems, the orphan sweep.

use super::*;

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

    // Completing (or cancelling) now must not take the spool from under the chunk: busy,
    // try again shortly (429 with Retry-After).
    let complete = server.url(&format!("/uploads/{id}/complete"));
    let refused = http
        .post(&complete)
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        refused.text().await
    );
    let refused = http
        .delete(&upload)
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

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
    // Cancelling or appending to it conflicts; completing it again is busy (a client whose
    // answer was lost retries, and finds the file once that completion is done).
    for (resp, status) in [
        (
            http.delete(&upload).bearer_auth(ALPHA_WRITER).send().await,
            StatusCode::CONFLICT,
        ),
        (
            http.post(&complete).bearer_auth(ALPHA_WRITER).send().await,
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (patch("bytes 2-3/4", b"cd").await, StatusCode::CONFLICT),
    ] {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(resp.headers().contains_key("retry-after"));
        }
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

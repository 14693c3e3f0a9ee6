//! The S3 backend against a real S3-compatible server (Ceph RGW, started by `scripts/test`
//! through `scripts/s3/start-ceph.sh`). Each test works under its own key prefix of the shared
//! bucket.

use crate::storage_conformance::{Fixture, conformance_suite, put};
use crate::support::{collect, random_bytes};
use artifactstore::identity::DualHasher;
use artifactstore::storage::s3::{S3Settings, S3Store, SecretRef};
use artifactstore::storage::{BlobStore, ByteRange, CommitOutcome, WriteHint};
use futures::TryStreamExt;
use std::sync::Arc;

/// Settings for the test server, under a fresh prefix. Without a server configured this fails:
/// `scripts/test` starts one; `ARTIFACTSTORE_TEST_S3=skip` skips these tests knowingly.
pub fn s3_settings() -> Option<S3Settings> {
    let Ok(endpoint) = std::env::var("ARTIFACTSTORE_TEST_S3_ENDPOINT") else {
        if std::env::var("ARTIFACTSTORE_TEST_S3").as_deref() == Ok("skip") {
            eprintln!("S3 tests skipped (ARTIFACTSTORE_TEST_S3=skip)");
            return None;
        }
        panic!(
            "no S3 server for the tests: run scripts/test (it starts Ceph RGW), or set \
             ARTIFACTSTORE_TEST_S3_ENDPOINT/_BUCKET and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
             or ARTIFACTSTORE_TEST_S3=skip"
        );
    };
    let bucket =
        std::env::var("ARTIFACTSTORE_TEST_S3_BUCKET").expect("ARTIFACTSTORE_TEST_S3_BUCKET");
    let mut settings = S3Settings::for_tests(&bucket);
    settings.endpoint_url = Some(endpoint);
    settings.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    Some(settings)
}

/// A storage file (`ARTIFACTSTORE_STORAGE_FILE`) in `dir` making `settings`' bucket the
/// default backend `s3`, unsigned, with `extra` TOML lines for the backend.
pub fn storage_file(dir: &std::path::Path, s3: &S3Settings, extra: &str) -> std::path::PathBuf {
    let storage = dir.join("storage.toml");
    std::fs::write(
        &storage,
        format!(
            "default_backend = \"s3\"\n[backends.s3]\nkind = \"s3\"\nendpoint_url = \"{}\"\n\
             bucket = \"{}\"\nkey_prefix = \"{}\"\naccess_key_ref = \"env:AWS_ACCESS_KEY_ID\"\n\
             secret_key_ref = \"env:AWS_SECRET_ACCESS_KEY\"\nforce_path_style = true\n\
             sign_payload = false\n{extra}",
            s3.endpoint_url.as_deref().unwrap(),
            s3.bucket,
            s3.key_prefix
        ),
    )
    .unwrap();
    storage
}

/// A store under a fresh prefix of the test bucket, with `settings` changed by `tune`; after
/// each check, nothing is left under its staging prefix.
async fn ceph_fixture(tune: fn(&mut S3Settings)) -> Option<Fixture> {
    let mut settings = s3_settings()?;
    tune(&mut settings);
    let store = Arc::new(S3Store::open("s3", &settings).unwrap());
    let kept = store.clone();
    Some(Fixture {
        store,
        keep: Box::new(()),
        after: Some(Box::new(move || {
            Box::pin(async move { assert_no_staging_left(&kept, &settings).await })
        })),
    })
}

/// The default settings: small blobs in one `PutObject`, larger ones in parts.
async fn single_put() -> Option<Fixture> {
    ceph_fixture(|_| ()).await
}

/// Every non-empty blob goes through a staged multipart upload and a server-side copy.
async fn multipart() -> Option<Fixture> {
    ceph_fixture(|settings| {
        settings.multipart_threshold_bytes = 0;
        settings.multipart_chunk_bytes = 5 * 1024 * 1024;
    })
    .await
}

/// Unsigned bodies: a write of an announced size above the threshold goes up as one streamed
/// PUT, to a staging key then a server-side copy, or straight to its announced address with
/// the last chunk held back until commit.
async fn streamed_put() -> Option<Fixture> {
    ceph_fixture(|settings| {
        settings.sign_payload = Some(false);
        settings.multipart_threshold_bytes = 1024 * 1024;
    })
    .await
}

conformance_suite!(ceph_single_put, single_put);
conformance_suite!(ceph_multipart, multipart);
conformance_suite!(ceph_streamed_put, streamed_put);

/// Nothing is left under the staging prefix: no objects and no unfinished uploads.
pub async fn assert_no_staging_left(store: &S3Store, settings: &S3Settings) {
    let prefix = format!("{}/.staging/", settings.key_prefix);
    // A dropped staged write is aborted in the background: wait for it, with a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        // (Unfinished uploads anywhere under the prefix: announced ones run at final keys.)
        let uploads = store
            .client()
            .list_multipart_uploads()
            .bucket(store.bucket())
            .prefix(&settings.key_prefix)
            .send()
            .await
            .unwrap();
        let mut left = uploads.uploads().len();
        // Staged objects, and upload sessions' joined ones.
        for prefix in [&prefix, &format!("{}/.uploads/", settings.key_prefix)] {
            let objects = store
                .client()
                .list_objects_v2()
                .bucket(store.bucket())
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            left += objects.contents().len();
        }
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} staged uploads/objects left under {prefix}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn large_blobs_go_up_in_parallel_parts_and_read_back_by_range() {
    let Some(mut settings) = s3_settings() else {
        return;
    };
    settings.multipart_threshold_bytes = 6 * 1024 * 1024;
    settings.multipart_chunk_bytes = 5 * 1024 * 1024;
    settings.multipart_concurrency = 3;
    let store = S3Store::open("s3", &settings).unwrap();
    // 23 MiB + 1: five parts, the last one a single byte.
    let data = random_bytes(23 * 1024 * 1024 + 1, 7);
    let (address, outcome) = put(&store, &data, 300_001).await;
    assert_eq!(outcome, CommitOutcome::Stored);
    assert_eq!(store.head(&address).await.unwrap(), Some(data.len() as u64));
    let whole = collect(store.get(&address, None).await.unwrap()).await;
    assert!(whole == data, "multipart blob read back differently");
    let (offset, length) = (5 * 1024 * 1024 - 3, 7);
    let got = collect(
        store
            .get(&address, Some(ByteRange { offset, length }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, &data[offset as usize..(offset + length) as usize]);
    // The object sits exactly at the documented key.
    let key = format!(
        "{}/blake3/{}/{}/{}",
        settings.key_prefix,
        &address.digest().to_hex()[0..2],
        &address.digest().to_hex()[2..4],
        address.digest().to_hex()
    );
    assert_eq!(store.key_of(&address), key);
    // Dedup of a large blob aborts the staged upload.
    let (_, outcome) = put(&store, &data, 1 << 20).await;
    assert_eq!(outcome, CommitOutcome::AlreadyPresent);
    assert_no_staging_left(&store, &settings).await;
}

#[tokio::test]
async fn abandoned_staging_is_swept() {
    let Some(mut settings) = s3_settings() else {
        return;
    };
    settings.multipart_threshold_bytes = 0;
    let store = S3Store::open("s3", &settings).unwrap();
    // A staged object left behind by a crash between publishing and cleaning up.
    let stray = format!("{}/.staging/crashed", settings.key_prefix);
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(&stray)
        .body(bytes::Bytes::from_static(b"partial").into())
        .send()
        .await
        .unwrap();
    // A multipart upload left behind by a killed process.
    store
        .client()
        .create_multipart_upload()
        .bucket(store.bucket())
        .key(format!("{}/.staging/killed", settings.key_prefix))
        .send()
        .await
        .unwrap();
    // Nothing is old enough yet.
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    assert_eq!(store.sweep_staging(an_hour_ago).await.unwrap(), 0);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    assert_eq!(store.sweep_staging(later).await.unwrap(), 2);
    assert_no_staging_left(&store, &settings).await;
    // Blobs are not staging: they survive the sweep.
    let (address, _) = put(&store, b"kept", 4).await;
    store.sweep_staging(later).await.unwrap();
    assert_eq!(store.head(&address).await.unwrap(), Some(4));
}

#[tokio::test]
async fn wrong_credentials_and_dead_endpoints_are_clean_errors() {
    let Some(settings) = s3_settings() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "definitely-not-the-secret\n").unwrap();
    let mut wrong = settings.clone();
    wrong.secret_key_ref = SecretRef::File(secret);
    let store = S3Store::open("s3", &wrong).unwrap();
    let health = store.health().await;
    assert!(!health.healthy, "{health:?}");
    let address = DualHasher::digest(b"x").primary_address();
    match store.get(&address, None).await {
        Err(artifactstore::Error::Storage { unavailable, .. }) => {
            assert!(!unavailable, "a refused signature is not an outage")
        }
        other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
    }

    // Nothing listens on this port: unavailable (503 to clients), quickly, after retries.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut dead = settings.clone();
    dead.endpoint_url = Some(format!("http://127.0.0.1:{port}"));
    dead.max_attempts = 2;
    let store = S3Store::open("s3", &dead).unwrap();
    let started = std::time::Instant::now();
    let mut staged = store.stage().await.unwrap();
    staged.write(bytes::Bytes::from_static(b"x")).await.unwrap();
    match staged.commit(&address).await {
        Err(artifactstore::Error::Storage { unavailable, .. }) => assert!(unavailable),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert!(!store.health().await.healthy);
    assert!(store.list().try_collect::<Vec<_>>().await.is_err());

    // Credentials named but absent are a configuration error at start-up.
    let mut unset = settings;
    unset.access_key_ref = SecretRef::Env("ARTIFACTSTORE_TEST_SURELY_UNSET".into());
    let err = S3Store::open("s3", &unset).unwrap_err().to_string();
    assert!(err.contains("ARTIFACTSTORE_TEST_SURELY_UNSET"), "{err}");
}

#[tokio::test]
async fn announced_digests_upload_straight_to_the_address_and_wrong_ones_leave_nothing() {
    let Some(mut settings) = s3_settings() else {
        return;
    };
    settings.multipart_threshold_bytes = 0;
    settings.multipart_chunk_bytes = 5 * 1024 * 1024;
    let store = S3Store::open("s3", &settings).unwrap();
    let data = random_bytes(11 * 1024 * 1024, 8);
    let address = DualHasher::digest(&data).primary_address();
    let announced = WriteHint {
        size: None,
        expected: Some(address),
    };
    // Announced, but the bytes are different: aborted, nothing appears, no upload is left.
    let mut wrong = store.stage_with(announced).await.unwrap();
    wrong
        .write(random_bytes(6 * 1024 * 1024, 9).into())
        .await
        .unwrap();
    wrong.abort().await.unwrap();
    assert_eq!(store.head(&address).await.unwrap(), None);
    assert_no_staging_left(&store, &settings).await;
    // Announced and right: stored under the address (no staging object involved).
    let mut right = store.stage_with(announced).await.unwrap();
    for piece in data.chunks(1 << 20) {
        right
            .write(bytes::Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
    assert_eq!(right.commit(&address).await.unwrap(), CommitOutcome::Stored);
    assert!(collect(store.get(&address, None).await.unwrap()).await == data);
    // A dropped announced upload is aborted in the background, and swept if that fails.
    let mut dropped = store.stage_with(announced).await.unwrap();
    dropped
        .write(data[..6 * 1024 * 1024].to_vec().into())
        .await
        .unwrap();
    drop(dropped);
    assert_no_staging_left(&store, &settings).await;
    assert!(collect(store.get(&address, None).await.unwrap()).await == data);
}

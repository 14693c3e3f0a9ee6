//! The Rust SDK (`sdk/rust`, generated from the committed spec by progenitor) against a real
//! server: the generated calls, resumable session uploads, verified downloads, the event
//! stream, and refusals as problems.

use crate::support::{Server, TestDb, random_bytes};
use artifactstore_client::{Store, StoreError, UploadOptions, types};
use futures::{StreamExt, TryStreamExt};

const TOKENS: &str = "acme:read+write+admin:sdk-token";

fn new_package(producer: &str) -> types::CreatePackage {
    types::CreatePackage {
        producer: producer.parse().unwrap(),
        subject: "s".parse().unwrap(),
        retention_class: None,
        metadata: [("suite".to_owned(), "sdk-rust".to_owned())]
            .into_iter()
            .collect(),
    }
}

#[tokio::test]
async fn the_rust_sdk_uploads_resumes_downloads_and_tails() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let store = Store::new(&server.base, "sdk-token").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let package = store
        .call(
            store
                .api()
                .create_package()
                .body(new_package("sdk-rust"))
                .send(),
        )
        .await
        .unwrap();

    // A file by session, in chunks.
    let data = random_bytes(3 * 1024 * 1024 + 17, 81);
    let source = dir.path().join("big.bin");
    std::fs::write(&source, &data).unwrap();
    let options = UploadOptions {
        chunk_size: 1 << 20,
        ..UploadOptions::default()
    };
    let big = store
        .upload_file(package.id, "dir/big.bin", &source, options.clone())
        .await
        .unwrap();
    assert_eq!(big.size, data.len() as u64);
    assert_eq!(big.digests.blake3, blake3::hash(&data).to_hex().to_string());

    // A session a first client left at 700,000 bytes resumes from there.
    let resumed = random_bytes(2 * 1024 * 1024 + 5, 82);
    let resumed_source = dir.path().join("resumed.bin");
    std::fs::write(&resumed_source, &resumed).unwrap();
    let session = store
        .call(
            store
                .api()
                .create_upload()
                .body(types::CreateUpload {
                    package_id: package.id,
                    relative_path: "resumed.bin".parse().unwrap(),
                    size: Some(resumed.len() as u64),
                    expected_digest: None,
                    media_type: None,
                    replace: None,
                })
                .send(),
        )
        .await
        .unwrap();
    let first = format!("bytes 0-699999/{}", resumed.len());
    store
        .call(
            store
                .api()
                .append_upload()
                .id(session.id)
                .content_range(first)
                .body(resumed[..700_000].to_vec())
                .send(),
        )
        .await
        .unwrap();
    // The session object still says 0: the 416's offset corrects it.
    let done = store
        .upload_file(
            package.id,
            "resumed.bin",
            &resumed_source,
            UploadOptions {
                session: Some(session.id),
                chunk_size: 512 * 1024,
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        done.digests.blake3,
        blake3::hash(&resumed).to_hex().to_string()
    );

    // Downloads are verified and written whole, or not at all.
    let target = dir.path().join("down.bin");
    store
        .download(
            big.id,
            &target,
            Some(&format!("blake3:{}", big.digests.blake3)),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let refused = store
        .download(
            big.id,
            &dir.path().join("wrong.bin"),
            Some(&format!("sha256:{}", "0".repeat(64))),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::DigestMismatch(_)),
        "{refused}"
    );
    assert!(!dir.path().join("wrong.bin").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // `If-Match` replaces only the file it names (412 otherwise): an optional parameter
    // is one more builder method.
    let put = |bytes: &'static [u8], tag: String| {
        store
            .api()
            .put_file()
            .id(package.id)
            .relative_path("notes.txt")
            .if_match(tag)
            .body(bytes.to_vec())
            .send()
    };
    let stale = store
        .call(put(b"first", format!("\"blake3:{}\"", "0".repeat(64))))
        .await
        .unwrap_err();
    assert_eq!(stale.status(), Some(412));
    store
        .call(
            store
                .api()
                .put_file()
                .id(package.id)
                .relative_path("notes.txt")
                .body(b"first".to_vec())
                .send(),
        )
        .await
        .unwrap();
    let notes = store
        .call(put(
            b"second",
            format!("\"blake3:{}\"", blake3::hash(b"first").to_hex()),
        ))
        .await
        .unwrap();
    assert_eq!(
        notes.digests.blake3,
        blake3::hash(b"second").to_hex().to_string()
    );

    // Refusals are problems with their status and request id.
    let finalized = store
        .call(store.api().finalize_package().id(package.id).send())
        .await
        .unwrap();
    // The manifest: CBOR bytes named by their digest, and the typed JSON projection.
    let cbor = store
        .call(store.api().get_manifest().id(package.id).send())
        .await
        .unwrap()
        .into_inner()
        .map_ok(|chunk| chunk.to_vec())
        .try_concat()
        .await
        .unwrap();
    assert_eq!(
        Some(format!("blake3:{}", blake3::hash(&cbor).to_hex())),
        finalized.manifest_digest
    );
    let json = store
        .call(store.api().get_manifest_json().id(package.id).send())
        .await
        .unwrap();
    assert_eq!(json.files.len(), 3);
    assert_eq!(finalized.file_count, 3);
    let late = store
        .call(
            store
                .api()
                .put_file()
                .id(package.id)
                .relative_path("late.bin")
                .body(b"x".to_vec())
                .send(),
        )
        .await
        .unwrap_err();
    match &late {
        StoreError::Problem {
            status, problem, ..
        } => {
            assert_eq!(*status, 409);
            assert!(problem.request_id.is_some());
        }
        other => panic!("{other}"),
    }
    let stranger = Store::new(&server.base, "not-a-token").unwrap();
    let unknown = stranger
        .call(stranger.api().get_package().id(package.id).send())
        .await
        .unwrap_err();
    assert_eq!(unknown.status(), Some(401));

    // The event stream: to the end of the log, then following a new commit.
    let events: Vec<types::EventJson> = store
        .events(0, false, 0)
        .map(Result::unwrap)
        .collect()
        .await;
    let mine: Vec<&str> = events
        .iter()
        .filter(|e| e.subject_id == package.id)
        .map(|e| e.type_.as_str())
        .collect();
    assert_eq!(
        mine,
        [
            "v1.package.created",
            "v1.file.ingested",
            "v1.file.ingested",
            "v1.file.ingested",
            "v1.file.ingested",
            "v1.package.finalized"
        ]
    );
    let last = events.last().unwrap().sequence;
    let mut tail = Box::pin(store.events(last, true, 10));
    let other = store
        .call(
            store
                .api()
                .create_package()
                .body(new_package("woken"))
                .send(),
        )
        .await
        .unwrap();
    let woken = tail.next().await.unwrap().unwrap();
    assert_eq!(woken.subject_id, other.id);
}

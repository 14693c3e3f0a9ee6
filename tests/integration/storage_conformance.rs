//! The backend conformance suite: every `BlobStore` must pass it unchanged. Each check is a
//! function of [`checks`] run on an empty store of its own; [`conformance_suite!`] makes one
//! test per check for a backend (here the local one; S3 in `s3.rs` and `s3_strict.rs`).

use crate::support::{collect, random_bytes};
use artifactstore::identity::{ContentAddress, DualHasher};
use artifactstore::storage::{BlobStore, CommitOutcome, StagedBlob, local::LocalStore};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;

/// Writes `data` into `staged` in pieces of 100,000 bytes.
async fn write_pieces(staged: &mut Box<dyn StagedBlob>, data: &[u8]) {
    for piece in data.chunks(100_000) {
        staged.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
}

pub async fn put(
    store: &dyn BlobStore,
    data: &[u8],
    chunk: usize,
) -> (ContentAddress, CommitOutcome) {
    let address = DualHasher::digest(data).primary_address();
    let mut staged = store.stage().await.unwrap();
    for piece in data.chunks(chunk.max(1)) {
        staged.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(staged.written(), data.len() as u64);
    (address, staged.commit(&address).await.unwrap())
}

/// The bytes a stream delivers before it ends, and whether it ended in an error.
async fn collect_until_error(mut stream: artifactstore::storage::ByteStream) -> (Vec<u8>, bool) {
    use futures::StreamExt;
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// A store for one check, and what it needs.
pub struct Fixture {
    /// The store, empty.
    pub store: Arc<dyn BlobStore>,
    /// What must live as long as the store (a temporary directory, a server).
    pub keep: Box<dyn std::any::Any + Send>,
    /// Checked after the check passed (say, that no staged write was left behind).
    pub after: Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>,
}

/// One `#[tokio::test]` per check of [`checks`] against the stores `$fixture` (an async
/// function returning `Option<Fixture>`; `None` skips) makes, in a module named `$backend`.
macro_rules! conformance_suite {
    ($backend:ident, $fixture:path) => {
        mod $backend {
            use $crate::storage_conformance::checks;

            type Store = std::sync::Arc<dyn artifactstore::storage::BlobStore>;

            async fn run(check: fn(Store) -> futures::future::BoxFuture<'static, ()>) {
                use super::*;
                let Some(fixture) = $fixture().await else {
                    return;
                };
                check(fixture.store.clone()).await;
                if let Some(after) = fixture.after {
                    after().await;
                }
                drop(fixture.keep);
            }

            $crate::storage_conformance::conformance_suite!(@tests
                put_get_head,
                writes_with_what_is_known_up_front,
                the_same_bytes_again_are_a_dedup,
                ranges,
                digest_of_the_stored_bytes,
                checked_reads,
                the_empty_blob,
                listing_sees_exactly_what_was_committed,
                aborted_and_dropped_writes_leave_nothing,
                missing_blobs,
                delete_is_idempotent,
                concurrent_commits_of_the_same_bytes,
                health,
            );
        }
    };
    (@tests $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                run(|store| Box::pin(checks::$check(store))).await;
            }
        )+
    };
}
pub(crate) use conformance_suite;

/// The checks. Each takes an empty store.
pub mod checks {
    use super::*;
    use artifactstore::storage::{ByteRange, WriteHint};
    use futures::TryStreamExt;

    /// 3 MiB and a bit, stored in odd-sized pieces: its address and bytes.
    async fn stored(store: &dyn BlobStore) -> (ContentAddress, Vec<u8>) {
        let data = random_bytes(3 * 1024 * 1024 + 17, 1);
        let (address, outcome) = put(store, &data, 64 * 1024 + 3).await;
        assert_eq!(outcome, CommitOutcome::Stored);
        (address, data)
    }

    pub async fn put_get_head(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        assert_eq!(store.list().try_collect::<Vec<_>>().await.unwrap(), vec![]);
        let (address, data) = stored(store).await;
        assert_eq!(
            collect(store.get(&address, None).await.unwrap()).await,
            data
        );
        assert_eq!(store.head(&address).await.unwrap(), Some(data.len() as u64));
    }

    pub async fn writes_with_what_is_known_up_front(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        // Writes with what is known up front: the size (one request where the backend can), the
        // address (straight to its place where the backend can), or both.
        for (i, (sized, announced)) in [(true, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
        {
            let what = format!("sized {sized}, announced {announced}");
            let bytes = random_bytes(2 * 1024 * 1024 + 5, 3 + i as u64);
            let address = DualHasher::digest(&bytes).primary_address();
            let hint = WriteHint {
                size: sized.then_some(bytes.len() as u64),
                expected: announced.then_some(address),
            };
            // Other bytes of the same length, cut short, or dropped: aborted, nothing appears.
            let other = random_bytes(bytes.len(), 10 + i as u64);
            for (written, abort) in [
                (&other[..], true),
                (&bytes[..1_000_000], true),
                (&bytes[..], false),
            ] {
                let mut staged = store.stage_with(hint).await.unwrap();
                write_pieces(&mut staged, written).await;
                if abort {
                    staged.abort().await.unwrap();
                } else {
                    drop(staged);
                }
                assert_eq!(store.head(&address).await.unwrap(), None, "{what}");
            }
            // Announced, but the bytes are others: committing them under their own address either
            // stores them there or fails; never does anything appear under the announced one.
            if announced {
                let other_address = DualHasher::digest(&other).primary_address();
                let mut staged = store.stage_with(hint).await.unwrap();
                write_pieces(&mut staged, &other).await;
                if staged.commit(&other_address).await.is_ok() {
                    assert!(collect(store.get(&other_address, None).await.unwrap()).await == other);
                    store.delete(&other_address).await.unwrap();
                }
                assert_eq!(store.head(&address).await.unwrap(), None, "{what}");
            }
            let mut staged = store.stage_with(hint).await.unwrap();
            write_pieces(&mut staged, &bytes).await;
            assert_eq!(
                staged.commit(&address).await.unwrap(),
                CommitOutcome::Stored,
                "{what}"
            );
            assert!(
                collect(store.get(&address, None).await.unwrap()).await == bytes,
                "{what}"
            );
            // The same again: reported as the dedup it is.
            let mut staged = store.stage_with(hint).await.unwrap();
            write_pieces(&mut staged, &bytes).await;
            assert_eq!(
                staged.commit(&address).await.unwrap(),
                CommitOutcome::AlreadyPresent,
                "{what}"
            );
            store.delete(&address).await.unwrap();
        }
    }

    pub async fn the_same_bytes_again_are_a_dedup(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        let (address, data) = stored(store).await;
        // Re-putting the same bytes is idempotent and reports the dedup.
        let (again, outcome) = put(store, &data, 1 << 20).await;
        assert_eq!((again, outcome), (address, CommitOutcome::AlreadyPresent));
    }

    pub async fn ranges(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        let (address, data) = stored(store).await;
        // Ranges: start, middle, last byte, whole.
        for (offset, length) in [
            (0, 1),
            (1000, 5000),
            (data.len() as u64 - 1, 1),
            (0, data.len() as u64),
        ] {
            let got = collect(
                store
                    .get(&address, Some(ByteRange { offset, length }))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(
                got,
                &data[offset as usize..(offset + length) as usize],
                "range {offset}+{length}"
            );
        }
    }

    pub async fn digest_of_the_stored_bytes(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        let (address, data) = stored(store).await;
        // Reading the stored bytes back for their digest (what verify checks).
        assert_eq!(
            store.read_digest(&address).await.unwrap(),
            (DualHasher::digest(&data).blake3, data.len() as u64)
        );
    }

    pub async fn checked_reads(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        let (address, data) = stored(store).await;
        // Checked whole reads: the intact bytes pass; a wrong digest or size never delivers the
        // whole body and ends in an error.
        let digest = DualHasher::digest(&data).blake3;
        let size = data.len() as u64;
        let (got, failed) =
            collect_until_error(store.get_checked(&address, digest, size).await.unwrap()).await;
        assert!(!failed, "intact bytes failed their check");
        assert_eq!(got, data);
        let other = DualHasher::digest(b"other bytes").blake3;
        for (expected, size, what) in [
            (other, size, "wrong digest"),
            (digest, size + 1, "recorded size larger"),
            (digest, size - 1, "recorded size smaller"),
        ] {
            let (got, failed) =
                collect_until_error(store.get_checked(&address, expected, size).await.unwrap())
                    .await;
            assert!(failed, "{what}: the stream did not fail");
            assert!(
                got.len() < data.len() && data.starts_with(&got),
                "{what}: {} of {} bytes delivered",
                got.len(),
                data.len()
            );
        }
    }

    pub async fn the_empty_blob(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        // The empty blob.
        let (empty, _) = put(store, b"", 1).await;
        assert_eq!(collect(store.get(&empty, None).await.unwrap()).await, b"");
        let (got, failed) = collect_until_error(
            store
                .get_checked(&empty, DualHasher::digest(b"").blake3, 0)
                .await
                .unwrap(),
        )
        .await;
        assert!(got.is_empty() && !failed);
        assert_eq!(store.head(&empty).await.unwrap(), Some(0));
    }

    pub async fn listing_sees_exactly_what_was_committed(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        let (address, data) = stored(store).await;
        let (empty, _) = put(store, b"", 1).await;
        // Listing sees exactly what was committed.
        let mut listed: Vec<_> = store.list().try_collect().await.unwrap();
        listed.sort_by_key(|b| b.size);
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].address, listed[0].size), (empty, 0));
        assert_eq!(
            (listed[1].address, listed[1].size),
            (address, data.len() as u64)
        );
    }

    pub async fn aborted_and_dropped_writes_leave_nothing(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        // Aborted and dropped staged writes leave nothing visible.
        let mut aborted = store.stage().await.unwrap();
        aborted
            .write(Bytes::from_static(b"never committed"))
            .await
            .unwrap();
        aborted.abort().await.unwrap();
        let mut dropped = store.stage().await.unwrap();
        dropped
            .write(Bytes::from_static(b"dropped mid-write"))
            .await
            .unwrap();
        drop(dropped);
        assert_eq!(store.list().try_collect::<Vec<_>>().await.unwrap(), vec![]);
    }

    pub async fn missing_blobs(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        let other = DualHasher::digest(b"other bytes").blake3;
        // Missing blobs: get is NotFound, head is None, delete succeeds.
        let missing = DualHasher::digest(b"not stored").primary_address();
        assert!(matches!(
            store.get(&missing, None).await,
            Err(artifactstore::Error::NotFound { .. })
        ));
        assert!(matches!(
            store.get_checked(&missing, other, 10).await,
            Err(artifactstore::Error::NotFound { .. })
        ));
        assert!(matches!(
            store.read_digest(&missing).await,
            Err(artifactstore::Error::NotFound { .. })
        ));
        assert_eq!(store.head(&missing).await.unwrap(), None);
        store.delete(&missing).await.unwrap();
    }

    pub async fn delete_is_idempotent(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        let (address, _) = stored(store).await;
        let (empty, _) = put(store, b"", 1).await;
        // Delete is idempotent.
        store.delete(&address).await.unwrap();
        store.delete(&address).await.unwrap();
        assert_eq!(store.head(&address).await.unwrap(), None);
        store.delete(&empty).await.unwrap();
        assert_eq!(store.list().try_collect::<Vec<_>>().await.unwrap(), vec![]);
    }

    pub async fn concurrent_commits_of_the_same_bytes(store: Arc<dyn BlobStore>) {
        let store = store.as_ref();
        // Concurrent commits of the same bytes all succeed and leave one intact blob.
        let shared = random_bytes(256 * 1024, 2);
        let results = futures::future::join_all((0..8).map(|_| put(store, &shared, 4096))).await;
        assert!(results.iter().all(|(a, _)| *a == results[0].0));
        assert_eq!(
            collect(store.get(&results[0].0, None).await.unwrap()).await,
            shared
        );
    }

    pub async fn health(store: Arc<dyn BlobStore>) {
        assert!(store.health().await.healthy);
    }
}

/// An empty local store in a temporary directory; after each check, no staging file is left
/// behind (by aborts, drops or commits).
async fn local_fixture() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let store = Arc::new(LocalStore::open("local", &root).unwrap());
    Some(Fixture {
        store,
        keep: Box::new(dir),
        after: Some(Box::new(move || {
            Box::pin(async move {
                let staging: Vec<_> = std::fs::read_dir(root.join(".staging")).unwrap().collect();
                assert!(staging.is_empty(), "staging files left: {staging:?}");
            })
        })),
    })
}

conformance_suite!(local, local_fixture);

#[tokio::test]
async fn local_store_layout_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let store = LocalStore::open("local", &root).unwrap();
    let data = b"layout";
    let (address, _) = put(&store, data, 3).await;
    let hex = address.digest().to_hex();
    let expected = root
        .join("blake3")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex);
    assert_eq!(std::fs::read(&expected).unwrap(), data);
    assert_eq!(store.path_of(&address), expected);

    // A truncated blob is healed by re-putting the same bytes.
    std::fs::write(&expected, b"lay").unwrap();
    let (_, outcome) = put(&store, data, 3).await;
    assert_eq!(outcome, CommitOutcome::Stored);
    assert_eq!(std::fs::read(&expected).unwrap(), data);

    // A small blob is linked into place before it is synced, so a crash can leave a file of
    // the right size whose bytes never reached the disk. Such a file is never taken for the
    // blob: re-putting the bytes replaces it, through the one-shot write and through adopting
    // a spooled file alike; an intact one is kept.
    std::fs::write(&expected, b"\0\0\0\0\0\0").unwrap();
    let (_, outcome) = put(&store, data, 3).await;
    assert_eq!(outcome, CommitOutcome::Stored);
    assert_eq!(std::fs::read(&expected).unwrap(), data);
    let (_, outcome) = put(&store, data, 3).await;
    assert_eq!(outcome, CommitOutcome::AlreadyPresent);
    std::fs::write(&expected, b"\0\0\0\0\0\0").unwrap();
    let spool = dir.path().join("spool");
    std::fs::write(&spool, data).unwrap();
    assert_eq!(
        store.adopt_file(&spool, &address).await.unwrap(),
        CommitOutcome::Stored
    );
    assert_eq!(std::fs::read(&expected).unwrap(), data);
    std::fs::write(&spool, data).unwrap();
    assert_eq!(
        store.adopt_file(&spool, &address).await.unwrap(),
        CommitOutcome::AlreadyPresent
    );
    assert!(!spool.exists(), "an adopted file is consumed");
    // No staging file is left behind by any of it.
    assert_eq!(std::fs::read_dir(root.join(".staging")).unwrap().count(), 0);

    let health = store.health().await;
    assert!(health.healthy && health.free_bytes.is_some(), "{health:?}");
    std::fs::remove_dir_all(&root).unwrap();
    let health = store.health().await;
    assert!(!health.healthy, "a missing root must be unhealthy");
    assert!(health.detail.contains("missing"), "{}", health.detail);
}

//! Upload sessions whose bytes are staged in S3 (the real server `scripts/test` starts, Ceph
//! RGW) and whose state is in PostgreSQL, so that any server continues them: the bytes go up
//! as the chunks arrive, chunks and completion taken by two registries that share nothing but
//! the database and the bucket; concurrent chunks at one offset keep one; a chunk cut off by an
//! outage is not kept and is sent again; a backend that is down at completion keeps the session
//! for a later try; a wrong digest leaves nothing; expired sessions and stages without a
//! session are swept. An outage is made on demand by a TCP relay in front of the S3 server
//! that the test cuts and restores.

use crate::s3::{assert_no_staging_left, s3_settings};
use crate::support::{TestDb, body, collect, random_bytes};
use artifactstore::domain::{RelativePath, TenantId};
use artifactstore::registry::{Chunk, Limits, NewUpload};
use artifactstore::storage::s3::{S3Settings, S3Store};
use artifactstore::storage::{Backends, BlobStore};
use artifactstore::{Error, Registry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay to the S3 server: [`cut`](Relay::cut) drops every live connection and turns
/// new ones away (an outage), [`restore`](Relay::restore) ends it.
struct Relay {
    endpoint: String,
    up: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let target = target
            .strip_prefix("http://")
            .expect("an http endpoint")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let accept = {
            let (up, generation) = (up.clone(), generation.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is closed at once
                    }
                    let mut cut = generation.subscribe();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Relay {
            endpoint,
            up,
            generation,
            accept,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Two registries ("servers") over one fresh database and one S3 backend, each spooling
/// under its own directory: they share nothing else.
struct Env {
    _db: TestDb,
    registry: Registry,
    other: Registry,
    store: Arc<S3Store>,
    settings: S3Settings,
    _dirs: [tempfile::TempDir; 2],
}

impl Env {
    async fn new(settings: S3Settings, limits: Limits) -> Env {
        Env::with_clock(
            settings,
            limits,
            Arc::new(artifactstore::domain::SystemClock),
        )
        .await
    }

    async fn with_clock(
        settings: S3Settings,
        limits: Limits,
        clock: Arc<dyn artifactstore::domain::Clock>,
    ) -> Env {
        let db = TestDb::new().await;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let store = Arc::new(S3Store::open("s3", &settings).unwrap());
        let server = |dir: &tempfile::TempDir| {
            let pool = artifactstore::db::pool(&db.url, 8).unwrap();
            Registry::new(pool, Backends::single(store.clone()))
                .with_upload_dir(dir.path().join("uploads"))
                .with_limits(limits)
                .with_clock(clock.clone())
        };
        Env {
            registry: server(&dirs[0]),
            other: server(&dirs[1]),
            _db: db,
            store,
            settings,
            _dirs: dirs,
        }
    }

    /// A session for `data` in a new package, with its size and BLAKE3 digest announced
    /// (`expected: None`: neither).
    async fn session(&self, data: &[u8], expected: Option<&[u8]>) -> uuid::Uuid {
        let tenant = TenantId::default_tenant();
        let package = crate::support::package(&self.registry).await;
        let new = NewUpload {
            package_id: package.id,
            relative_path: RelativePath::new("big.bin").unwrap(),
            media_type: None,
            size: expected.map(|_| data.len() as u64),
            expected_digest: expected
                .map(|e| artifactstore::DualHasher::digest(e).primary_address()),
            replace: false,
        };
        self.registry.create_upload(&tenant, new).await.unwrap().id
    }

    /// Sends `data[from..to]` as one chunk through `via`.
    async fn append_via(
        via: &Registry,
        id: uuid::Uuid,
        data: &[u8],
        from: usize,
        to: usize,
    ) -> artifactstore::Result<u64> {
        let chunk = Chunk {
            start: from as u64,
            end: Some(to as u64 - 1),
            total: Some(data.len() as u64),
        };
        via.append_upload(
            &TenantId::default_tenant(),
            id,
            chunk,
            body(&data[from..to], 256 * 1024),
        )
        .await
        .map(|s| s.offset)
    }

    async fn append(&self, id: uuid::Uuid, data: &[u8], from: usize, to: usize) {
        Env::append_via(&self.registry, id, data, from, to)
            .await
            .unwrap();
    }

    async fn complete_via(via: &Registry, id: uuid::Uuid) -> artifactstore::Result<Vec<u8>> {
        let tenant = TenantId::default_tenant();
        let file = via.complete_upload(&tenant, id).await?;
        let read = via.read_file(&tenant, file.id, None).await?;
        Ok(collect(read.body).await)
    }

    async fn complete(&self, id: uuid::Uuid) -> artifactstore::Result<Vec<u8>> {
        Env::complete_via(&self.registry, id).await
    }

    /// Whether the blob of `data` is stored under its address in the bucket.
    async fn stored(&self, data: &[u8]) -> bool {
        let address = artifactstore::DualHasher::digest(data).primary_address();
        self.store.head(&address).await.unwrap().is_some()
    }

    /// Parts uploaded so far to the unfinished multipart uploads under the test's prefix.
    async fn uploaded_parts(&self) -> usize {
        let client = self.store.client();
        let uploads = client
            .list_multipart_uploads()
            .bucket(&self.settings.bucket)
            .prefix(&self.settings.key_prefix)
            .send()
            .await
            .unwrap();
        let mut parts = 0;
        for upload in uploads.uploads() {
            parts += client
                .list_parts()
                .bucket(&self.settings.bucket)
                .key(upload.key().unwrap())
                .upload_id(upload.upload_id().unwrap())
                .send()
                .await
                .unwrap()
                .parts()
                .len();
        }
        parts
    }

    /// Nothing of the session's bytes on either server's disk.
    fn nothing_spooled(&self) {
        for dir in &self._dirs {
            let spooled = std::fs::read_dir(dir.path().join("uploads"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(spooled, 0, "spooled on a server's disk");
        }
    }
}

/// S3 settings for these tests: parts (pieces) of 5 MiB, the smallest S3 takes.
fn settings(sign_payload: bool) -> Option<S3Settings> {
    let mut s = s3_settings()?;
    s.multipart_threshold_bytes = 1024 * 1024;
    s.multipart_chunk_bytes = 5 * 1024 * 1024;
    s.sign_payload = Some(sign_payload);
    Some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_go_into_s3_as_they_arrive_and_either_server_continues_and_completes() {
    for sign_payload in [false, true] {
        let Some(settings) = settings(sign_payload) else {
            return;
        };
        let env = Env::new(settings, Limits::default()).await;
        let data = random_bytes(13 * 1024 * 1024, 41);
        let id = env.session(&data, Some(&data)).await;
        // 3 MiB: too few for a part, kept in the database.
        env.append(id, &data, 0, 3 << 20).await;
        assert_eq!(env.uploaded_parts().await, 0);
        // Through the other server: 3 + 6 MiB make one 5 MiB part, 4 MiB wait.
        assert_eq!(
            Env::append_via(&env.other, id, &data, 3 << 20, 9 << 20)
                .await
                .unwrap(),
            9 << 20
        );
        assert_eq!(env.uploaded_parts().await, 1);
        // Back through the first, whose running digest is stale now.
        env.append(id, &data, 9 << 20, 12 << 20).await;
        assert_eq!(env.uploaded_parts().await, 2);
        assert!(!env.stored(&data).await, "visible before completion");
        Env::append_via(&env.other, id, &data, 12 << 20, data.len())
            .await
            .unwrap();
        env.nothing_spooled();
        // Completed by the server that took neither the first nor most chunks: it reads the
        // joined bytes back for their digest.
        assert_eq!(env.complete(id).await.unwrap(), data);
        assert!(env.stored(&data).await);
        assert_no_staging_left(&env.store, &env.settings).await;
        // One server all along: completed from its running digest.
        let more = random_bytes(11 * 1024 * 1024, 48);
        let id = env.session(&more, Some(&more)).await;
        for (from, to) in [(0, 6 << 20), (6 << 20, more.len())] {
            env.append(id, &more, from, to).await;
        }
        assert_eq!(env.complete(id).await.unwrap(), more);
        assert_no_staging_left(&env.store, &env.settings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chunks_at_one_offset_keep_exactly_one() {
    let Some(settings) = settings(false) else {
        return;
    };
    let env = Env::new(settings, Limits::default()).await;
    let (a, b) = (random_bytes(6 << 20, 49), random_bytes(6 << 20, 50));
    let id = env.session(&a, None).await;
    // Both start at 0 on different servers: one chunk at a time, so the other is refused
    // (busy while the first runs, or told the offset after it).
    let (via_a, via_b) = tokio::join!(
        Env::append_via(&env.registry, id, &a, 0, a.len()),
        Env::append_via(&env.other, id, &b, 0, b.len()),
    );
    let refused = |e: &Error| {
        matches!(e, Error::Busy(_))
            || matches!(e, Error::OffsetMismatch { offset } if *offset == a.len() as u64)
    };
    let kept = match (&via_a, &via_b) {
        (Ok(_), Err(e)) if refused(e) => &a,
        (Err(e), Ok(_)) if refused(e) => &b,
        other => panic!("exactly one chunk is kept: {other:?}"),
    };
    assert_eq!(&env.complete(id).await.unwrap(), kept);
    assert_no_staging_left(&env.store, &env.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_cut_off_by_an_outage_is_not_kept_and_is_sent_again() {
    let Some(mut settings) = settings(false) else {
        return;
    };
    let relay = Relay::start(settings.endpoint_url.as_deref().unwrap()).await;
    settings.endpoint_url = Some(relay.endpoint.clone());
    settings.max_attempts = 1;
    let env = Env::new(settings, Limits::default()).await;
    let data = random_bytes(12 * 1024 * 1024, 42);
    let id = env.session(&data, Some(&data)).await;
    env.append(id, &data, 0, 6 << 20).await;
    relay.cut();
    let err = Env::append_via(&env.registry, id, &data, 6 << 20, 11 << 20)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    relay.restore();
    let tenant = TenantId::default_tenant();
    assert_eq!(
        env.other.get_upload(&tenant, id).await.unwrap().offset,
        6 << 20,
        "nothing of the failed chunk kept"
    );
    Env::append_via(&env.other, id, &data, 6 << 20, 11 << 20)
        .await
        .unwrap();
    env.append(id, &data, 11 << 20, data.len()).await;
    assert_eq!(env.complete(id).await.unwrap(), data);
    assert_no_staging_left(&env.store, &env.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_keeps_the_session_while_the_backend_is_down() {
    // A file smaller than a part (stored from the database at completion) and a larger one.
    for size in [3 << 20, 7 << 20] {
        let Some(mut settings) = settings(false) else {
            return;
        };
        let relay = Relay::start(settings.endpoint_url.as_deref().unwrap()).await;
        settings.endpoint_url = Some(relay.endpoint.clone());
        settings.max_attempts = 1;
        let env = Env::new(settings, Limits::default()).await;
        let data = random_bytes(size, 43);
        let id = env.session(&data, Some(&data)).await;
        env.append(id, &data, 0, data.len()).await;
        relay.cut();
        let err = env.complete(id).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            matches!(err, Error::Storage { .. }),
            "the backend's failure: {err:?}"
        );
        // The session and its bytes are kept: the client completes again later (anywhere).
        let tenant = TenantId::default_tenant();
        let session = env.registry.get_upload(&tenant, id).await.unwrap();
        assert_eq!(session.offset, data.len() as u64);
        relay.restore();
        assert_eq!(
            Env::complete_via(&env.other, id).await.unwrap(),
            data,
            "{size} bytes"
        );
        assert!(matches!(
            env.registry.get_upload(&tenant, id).await,
            Err(Error::NotFound { .. })
        ));
        assert!(env.stored(&data).await);
        assert_no_staging_left(&env.store, &env.settings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_leaves_nothing() {
    for sign_payload in [false, true] {
        let Some(settings) = settings(sign_payload) else {
            return;
        };
        let env = Env::new(settings, Limits::default()).await;
        let data = random_bytes(7 * 1024 * 1024, 44);
        let mut other = data.clone();
        other[12345] ^= 1;
        let id = env.session(&data, Some(&other)).await;
        env.append(id, &data, 0, data.len()).await;
        let err = env.complete(id).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
        assert!(!env.stored(&data).await && !env.stored(&other).await);
        // The session is over, and nothing of it is left in the bucket.
        assert!(
            env.registry
                .get_upload(&TenantId::default_tenant(), id)
                .await
                .is_err()
        );
        assert_no_staging_left(&env.store, &env.settings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_streaming_at_once_are_bounded_and_wait_for_a_slot() {
    let Some(settings) = settings(false) else {
        return;
    };
    let limits = Limits {
        max_streaming_chunks: 1,
        ..Limits::default()
    };
    let env = Env::new(settings, limits).await;
    let data = random_bytes(2 << 20, 51);
    let (held, other) = (
        env.session(&data, Some(&data)).await,
        env.session(&data, Some(&data)).await,
    );
    // A chunk whose body does not end holds the one slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(1);
    let slow = {
        let registry = env.registry.clone();
        tokio::spawn(async move {
            let chunk = Chunk {
                start: 0,
                end: None,
                total: None,
            };
            let body = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            registry
                .append_upload(&TenantId::default_tenant(), held, chunk, body)
                .await
        })
    };
    tx.send(Ok(bytes::Bytes::from_static(b"x"))).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The next chunk waits for the slot (up to 30 s, then 429)...
    let waiting = {
        let registry = env.registry.clone();
        let data = data.clone();
        tokio::spawn(async move { Env::append_via(&registry, other, &data, 0, data.len()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the one slot is held");
    // ...and gets it once the held chunk ends.
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap().offset, 1);
    assert_eq!(waiting.await.unwrap().unwrap(), data.len() as u64);
    env.append(held, &data, 1, data.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_and_stages_without_a_session_are_swept() {
    let Some(settings) = settings(false) else {
        return;
    };
    let clock = Arc::new(crate::support::TestClock::at(2_000_000_000));
    let env = Env::with_clock(settings, Limits::default(), clock.clone()).await;
    let data = random_bytes(12 << 20, 52);
    let id = env.session(&data, Some(&data)).await;
    env.append(id, &data, 0, 11 << 20).await;
    assert_eq!(env.uploaded_parts().await, 2);
    // A stage a server began and died before recording (no session names it).
    let pieces = env.store.pieces().unwrap();
    let orphan = pieces.begin(uuid::Uuid::now_v7()).await.unwrap();
    pieces
        .put(&orphan, 1, bytes::Bytes::from(vec![7u8; 5 << 20]))
        .await
        .unwrap();
    // A day later the session has expired: it goes, and so do both stages.
    clock.advance(24 * 3600 + 1);
    assert_eq!(env.other.expire_uploads().await.unwrap(), 1);
    assert!(matches!(
        env.registry
            .get_upload(&TenantId::default_tenant(), id)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert_no_staging_left(&env.store, &env.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunks_through_both_servers_gather_into_pieces() {
    let Some(settings) = settings(true) else {
        return;
    };
    let env = Env::new(settings, Limits::default()).await;
    let data = random_bytes((7 << 20) + 12345, 53);
    let id = env.session(&data, Some(&data)).await;
    let step = 1 << 20;
    let mut from = 0;
    let mut turn = 0;
    while from < data.len() {
        let to = (from + step).min(data.len());
        let via = if turn % 2 == 0 {
            &env.registry
        } else {
            &env.other
        };
        assert_eq!(
            Env::append_via(via, id, &data, from, to).await.unwrap(),
            to as u64
        );
        // The fifth MiB fills the first piece; until then the bytes wait in the database.
        let parts = if to >= 5 << 20 { 1 } else { 0 };
        assert_eq!(env.uploaded_parts().await, parts, "after {to} bytes");
        (from, turn) = (to, turn + 1);
    }
    assert_eq!(Env::complete_via(&env.other, id).await.unwrap(), data);
    assert_no_staging_left(&env.store, &env.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_chunks_keep_few_rows_of_pending_bytes() {
    let Some(settings) = settings(false) else {
        return;
    };
    let env = Env::new(settings, Limits::default()).await;
    let data = random_bytes(100 * 1000 + 7, 54);
    let id = env.session(&data, Some(&data)).await;
    let mut from = 0;
    while from < data.len() {
        let to = (from + 1000).min(data.len());
        let via = if from % 2000 == 0 {
            &env.registry
        } else {
            &env.other
        };
        Env::append_via(via, id, &data, from, to).await.unwrap();
        from = to;
    }
    let client = env.registry.pool().get().await.unwrap();
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM upload_pending WHERE upload_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rows <= 33, "{rows} rows for 101 chunks");
    assert_eq!(Env::complete_via(&env.other, id).await.unwrap(), data);
}

/// The staged-pieces contract on S3: a piece sent again replaces the one before, a commit
/// leaves the joined bytes until they are discarded (a completion that failed to record its
/// file commits again), joining twice succeeds, and discarding twice does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_keeps_the_joined_bytes_until_they_are_discarded() {
    let Some(settings) = settings(false) else {
        return;
    };
    let env = Env::new(settings, Limits::default()).await;
    let pieces = env.store.pieces().unwrap();
    let data = random_bytes((5 << 20) + 100, 55);
    let address = artifactstore::DualHasher::digest(&data).primary_address();
    let stage = pieces.begin(uuid::Uuid::now_v7()).await.unwrap();
    let stale = pieces
        .put(&stage, 1, bytes::Bytes::from(vec![0u8; 5 << 20]))
        .await
        .unwrap();
    let last = pieces
        .put(&stage, 2, bytes::Bytes::copy_from_slice(&data[5 << 20..]))
        .await
        .unwrap();
    // A piece sent again replaces what was sent before at its number.
    let first = pieces
        .put(&stage, 1, bytes::Bytes::copy_from_slice(&data[..5 << 20]))
        .await
        .unwrap();
    assert_ne!(stale, first);
    let kept = vec![(1, first), (2, last)];
    pieces
        .join(&stage, kept.clone(), data.len() as u64)
        .await
        .unwrap();
    pieces.join(&stage, kept, data.len() as u64).await.unwrap();
    assert_eq!(
        pieces
            .commit(&stage, &address, data.len() as u64)
            .await
            .unwrap(),
        artifactstore::storage::CommitOutcome::Stored
    );
    assert_eq!(
        pieces
            .commit(&stage, &address, data.len() as u64)
            .await
            .unwrap(),
        artifactstore::storage::CommitOutcome::AlreadyPresent
    );
    assert_eq!(collect(pieces.read(&stage).await.unwrap()).await, data);
    assert_eq!(
        collect(env.store.get(&address, None).await.unwrap()).await,
        data
    );
    pieces.abort(&stage).await.unwrap();
    pieces.abort(&stage).await.unwrap();
    assert_no_staging_left(&env.store, &env.settings).await;
    env.store.delete(&address).await.unwrap();
}

/// Servers configured with different part sizes (a rolling change of `multipart_chunk_bytes`)
/// cannot make a session's bytes out of order: completion finds its pieces not contiguous and
/// refuses (nothing is published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_size_changed_mid_session_is_refused_not_misordered() {
    let Some(settings) = settings(false) else {
        return;
    };
    let env = Env::new(settings.clone(), Limits::default()).await;
    let mut larger = settings;
    larger.multipart_chunk_bytes = 10 << 20;
    let store = Arc::new(S3Store::open("s3", &larger).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let other = Registry::new(
        artifactstore::db::pool(&env._db.url, 4).unwrap(),
        Backends::single(store),
    )
    .with_upload_dir(dir.path().join("uploads"));
    let data = random_bytes(30 << 20, 56);
    let id = env.session(&data, None).await;
    env.append(id, &data, 0, 10 << 20).await;
    Env::append_via(&other, id, &data, 10 << 20, data.len())
        .await
        .unwrap();
    let err = env.complete(id).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert!(!env.stored(&data).await);
    assert_no_staging_left(&env.store, &env.settings).await;
}

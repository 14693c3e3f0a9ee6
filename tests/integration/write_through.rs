//! Upload sessions writing through to S3 (the real server `scripts/test` starts, Ceph RGW):
//! the bytes go up as the chunks arrive and completion commits them; a write-through cut off
//! midway falls back to the spooled file; a backend that is down at completion keeps the
//! session for a later try; a wrong digest leaves nothing. An outage is made on demand by a
//! TCP relay in front of the S3 server that the test cuts and restores.

use crate::s3::{assert_no_staging_left, s3_settings};
use crate::support::{TestDb, body, collect, random_bytes};
use artifactstore::domain::{RelativePath, TenantId};
use artifactstore::registry::{Chunk, Limits, NewUpload, WriteThroughStats};
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

/// A registry over a fresh database with one S3 backend, spooling under `dir`.
struct Env {
    _db: TestDb,
    registry: Registry,
    store: Arc<S3Store>,
    settings: S3Settings,
    _dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(S3Store::open("s3", &settings).unwrap());
        let pool = artifactstore::db::pool(&db.url, 8).unwrap();
        let registry = Registry::new(pool, Backends::single(store.clone()))
            .with_upload_dir(dir.path().join("uploads"))
            .with_limits(limits)
            .with_clock(clock);
        Env {
            _db: db,
            registry,
            store,
            settings,
            _dir: dir,
        }
    }

    /// A session for `data` in a new package, with its size and BLAKE3 digest announced.
    async fn session(&self, data: &[u8], expected: &[u8]) -> uuid::Uuid {
        let tenant = TenantId::default_tenant();
        let package = crate::support::package(&self.registry).await;
        let new = NewUpload {
            package_id: package.id,
            relative_path: RelativePath::new("big.bin").unwrap(),
            media_type: None,
            size: Some(data.len() as u64),
            expected_digest: Some(artifactstore::DualHasher::digest(expected).primary_address()),
            replace: false,
        };
        self.registry.create_upload(&tenant, new).await.unwrap().id
    }

    /// Sends `data[from..to]` as one chunk.
    async fn append(&self, id: uuid::Uuid, data: &[u8], from: usize, to: usize) {
        let chunk = Chunk {
            start: from as u64,
            end: Some(to as u64 - 1),
            total: Some(data.len() as u64),
        };
        self.registry
            .append_upload(
                &TenantId::default_tenant(),
                id,
                chunk,
                body(&data[from..to], 256 * 1024),
            )
            .await
            .unwrap();
    }

    async fn complete(&self, id: uuid::Uuid) -> artifactstore::Result<Vec<u8>> {
        let tenant = TenantId::default_tenant();
        let file = self.registry.complete_upload(&tenant, id).await?;
        let read = self.registry.read_file(&tenant, file.id, None).await?;
        Ok(collect(read.body).await)
    }

    /// Whether the blob of `data` is stored under its address in the bucket.
    async fn stored(&self, data: &[u8]) -> bool {
        let address = artifactstore::DualHasher::digest(data).primary_address();
        self.store.head(&address).await.unwrap().is_some()
    }

    fn stats(&self) -> WriteThroughStats {
        self.registry.write_through_stats()
    }
}

/// Parts uploaded so far to the one unfinished multipart upload under the test's prefix.
async fn uploaded_parts(env: &Env) -> usize {
    let client = env.store.client();
    let uploads = client
        .list_multipart_uploads()
        .bucket(&env.settings.bucket)
        .prefix(&env.settings.key_prefix)
        .send()
        .await
        .unwrap();
    let [upload] = uploads.uploads() else {
        panic!("one multipart upload expected: {uploads:?}");
    };
    client
        .list_parts()
        .bucket(&env.settings.bucket)
        .key(upload.key().unwrap())
        .upload_id(upload.upload_id().unwrap())
        .send()
        .await
        .unwrap()
        .parts()
        .len()
}

/// One write-through started and still going.
fn alive() -> WriteThroughStats {
    WriteThroughStats {
        started: 1,
        committed: 0,
        given_up: 0,
    }
}

/// S3 settings for these tests: anything over 1 MiB is written through.
fn settings(sign_payload: bool) -> Option<S3Settings> {
    let mut s = s3_settings()?;
    s.multipart_threshold_bytes = 1024 * 1024;
    s.multipart_chunk_bytes = 5 * 1024 * 1024;
    s.sign_payload = Some(sign_payload);
    Some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_write_through_to_s3_as_chunks_arrive_and_completion_commits_them() {
    // Unsigned bodies stream as one PUT; signed ones go up in parts as they fill.
    for sign_payload in [false, true] {
        let Some(settings) = settings(sign_payload) else {
            return;
        };
        let env = Env::new(settings, Limits::default()).await;
        let data = random_bytes(12 * 1024 * 1024, 41);
        let id = env.session(&data, &data).await;
        env.append(id, &data, 0, 6 << 20).await;
        env.append(id, &data, 6 << 20, 11 << 20).await;
        if sign_payload {
            // The parts filled so far reach the bucket before completion (their requests are
            // in flight meanwhile: wait for the first, with a bound).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while uploaded_parts(&env).await == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no part uploaded before completion"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        assert!(!env.stored(&data).await, "visible before completion");
        env.append(id, &data, 11 << 20, data.len()).await;
        assert_eq!(env.stats(), alive());
        assert_eq!(env.complete(id).await.unwrap(), data);
        assert_eq!(
            env.stats(),
            WriteThroughStats {
                started: 1,
                committed: 1,
                given_up: 0
            },
            "completed by committing the write-through (sign_payload = {sign_payload})"
        );
        assert!(env.stored(&data).await);
        let spool = env._dir.path().join("uploads").join(id.to_string());
        assert!(!spool.exists(), "spool removed");
        assert_no_staging_left(&env.store, &env.settings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_cut_off_midway_falls_back_to_the_spooled_file() {
    let Some(mut settings) = settings(false) else {
        return;
    };
    let relay = Relay::start(settings.endpoint_url.as_deref().unwrap()).await;
    settings.endpoint_url = Some(relay.endpoint.clone());
    settings.max_attempts = 1;
    let env = Env::new(settings, Limits::default()).await;
    let data = random_bytes(12 * 1024 * 1024, 42);
    let id = env.session(&data, &data).await;
    env.append(id, &data, 0, 4 << 20).await;
    assert_eq!(env.stats(), alive(), "writing through before the outage");
    // The backend goes away mid-session: the chunks are still taken (spooled).
    relay.cut();
    env.append(id, &data, 4 << 20, 8 << 20).await;
    relay.restore();
    env.append(id, &data, 8 << 20, data.len()).await;
    assert_eq!(env.complete(id).await.unwrap(), data);
    assert_eq!(
        env.stats(),
        WriteThroughStats {
            started: 1,
            committed: 0,
            given_up: 1
        }
    );
    assert!(env.stored(&data).await);
    assert_no_staging_left(&env.store, &env.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_keeps_the_session_while_the_backend_is_down() {
    // Without a write-through (the spool is sent at completion) and with one.
    for max_write_through_uploads in [0, 16] {
        let Some(mut settings) = settings(false) else {
            return;
        };
        let relay = Relay::start(settings.endpoint_url.as_deref().unwrap()).await;
        settings.endpoint_url = Some(relay.endpoint.clone());
        settings.max_attempts = 1;
        let limits = Limits {
            max_write_through_uploads,
            ..Limits::default()
        };
        let env = Env::new(settings, limits).await;
        let data = random_bytes(3 * 1024 * 1024, 43);
        let id = env.session(&data, &data).await;
        env.append(id, &data, 0, data.len()).await;
        let expected = if max_write_through_uploads > 0 {
            alive()
        } else {
            WriteThroughStats::default()
        };
        assert_eq!(env.stats(), expected);
        relay.cut();
        let err = env.complete(id).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            matches!(err, Error::Storage { .. }),
            "the backend's failure: {err:?}"
        );
        // The session and its bytes are kept: the client completes again later.
        let tenant = TenantId::default_tenant();
        let session = env.registry.get_upload(&tenant, id).await.unwrap();
        assert_eq!(session.offset, data.len() as u64);
        relay.restore();
        assert_eq!(
            env.complete(id).await.unwrap(),
            data,
            "max_write_through_uploads = {max_write_through_uploads}"
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
async fn a_wrong_digest_written_through_leaves_nothing() {
    for sign_payload in [false, true] {
        let Some(settings) = settings(sign_payload) else {
            return;
        };
        let env = Env::new(settings, Limits::default()).await;
        let data = random_bytes(7 * 1024 * 1024, 44);
        let mut other = data.clone();
        other[12345] ^= 1;
        // Announced as `other`: the write-through goes straight to that address.
        let id = env.session(&data, &other).await;
        env.append(id, &data, 0, data.len()).await;
        assert_eq!(env.stats(), alive());
        let err = env.complete(id).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
        assert_eq!(env.stats().given_up, 1);
        assert!(!env.stored(&data).await && !env.stored(&other).await);
        // The session is over, and nothing of it is left in the bucket.
        assert!(
            env.registry
                .get_upload(&TenantId::default_tenant(), id)
                .await
                .is_err()
        );
        assert_no_staging_left(&env.store, &env.settings).await;
        assert!(!env.stored(&other).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gone_quiet_gives_its_write_through_slot_to_a_new_one() {
    let Some(settings) = settings(false) else {
        return;
    };
    let clock = Arc::new(crate::support::TestClock::at(2_000_000_000));
    let limits = Limits {
        max_write_through_uploads: 1,
        ..Limits::default()
    };
    let env = Env::with_clock(settings, limits, clock.clone()).await;
    let (a, b, c) = (
        random_bytes(3 << 20, 45),
        random_bytes(3 << 20, 46),
        random_bytes(3 << 20, 47),
    );
    let quiet = env.session(&a, &a).await;
    env.append(quiet, &a, 0, 1 << 20).await;
    assert_eq!(env.stats(), alive(), "the one slot is taken");
    // While the first session is recent, the slot stays its own: the next one only spools.
    let spooling = env.session(&b, &b).await;
    env.append(spooling, &b, 0, 1 << 20).await;
    assert_eq!(env.stats(), alive());
    // Two minutes without a chunk: the next session takes the slot over.
    clock.advance(121);
    let next = env.session(&c, &c).await;
    env.append(next, &c, 0, 1 << 20).await;
    assert_eq!(
        env.stats(),
        WriteThroughStats {
            started: 2,
            committed: 0,
            given_up: 1
        }
    );
    // Every session still ends with its bytes: the quiet one and the spooling one from their
    // spools, the new one by committing its write-through.
    for (id, data) in [(quiet, &a), (spooling, &b), (next, &c)] {
        env.append(id, data, 1 << 20, data.len()).await;
        assert_eq!(&env.complete(id).await.unwrap(), data);
    }
    assert_eq!(env.stats().committed, 1);
    assert_no_staging_left(&env.store, &env.settings).await;
}

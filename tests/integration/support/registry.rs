//! A registry over a temporary local store, and what tests feed it: bytes, requests,
//! packages, a clock they move.

use super::TestDb;
use artifactstore::Registry;
use artifactstore::storage::{Backends, local::LocalStore};
use std::sync::Arc;

/// A database, a local store in a temporary directory, and a registry over both.
pub struct TestEnv {
    pub db: TestDb,
    pub registry: Registry,
    pub store: Arc<LocalStore>,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open("local", dir.path().join("blobs")).unwrap());
        let pool = artifactstore::db::pool(&db.url, 24).unwrap();
        let registry = Registry::new(pool, Backends::single(store.clone()));
        TestEnv {
            db,
            registry,
            store,
            dir,
        }
    }
}

/// A byte stream from a slice, cut into chunks of `chunk` bytes.
pub fn body(
    data: &[u8],
    chunk: usize,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + use<> {
    let chunks: Vec<std::io::Result<bytes::Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Reads a stream to the end.
pub async fn collect(stream: artifactstore::storage::ByteStream) -> Vec<u8> {
    use futures::TryStreamExt;
    stream
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
        .unwrap()
}

/// A request to store a file at `path` (no media type, no expected digest, no replacing).
pub fn ingest_request(path: &str) -> artifactstore::registry::IngestRequest {
    artifactstore::registry::IngestRequest {
        relative_path: artifactstore::domain::RelativePath::new(path).unwrap(),
        media_type: None,
        expected_digest: None,
        replace: false,
        if_match: None,
    }
}

/// A new open package of the default tenant (producer `p`, subject `s`).
pub async fn package(registry: &Registry) -> artifactstore::registry::Package {
    registry
        .create_package(
            &artifactstore::domain::TenantId::default_tenant(),
            artifactstore::registry::NewPackage {
                producer: "p".into(),
                subject: "s".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

/// A clock that stands still until a test moves it.
pub struct TestClock(std::sync::atomic::AtomicI64);

impl TestClock {
    /// At `unix_seconds`.
    pub fn at(unix_seconds: i64) -> Self {
        TestClock(std::sync::atomic::AtomicI64::new(unix_seconds))
    }

    /// Moves the clock on by `seconds`.
    pub fn advance(&self, seconds: i64) {
        self.0
            .fetch_add(seconds, std::sync::atomic::Ordering::SeqCst);
    }
}

impl artifactstore::domain::Clock for TestClock {
    fn now(&self) -> artifactstore::domain::Timestamp {
        artifactstore::domain::Timestamp::from_datetime(
            time::OffsetDateTime::from_unix_timestamp(
                self.0.load(std::sync::atomic::Ordering::SeqCst),
            )
            .unwrap(),
        )
    }
}

/// Defines the retention class `instant`, whose packages are due the moment they are
/// finalized. The library refuses durations under one second; a log may still hold such a
/// class (defined by an earlier version), so the event is recorded as that version did.
pub async fn define_instant_class(registry: &Registry) {
    use artifactstore::events::{ClassDefined, DomainEvent};
    let mut client = registry.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let recorded = artifactstore::events::record(
        &tx,
        vec![DomainEvent::new(ClassDefined {
            name: "instant".into(),
            duration_seconds: Some(0),
            description: "due at finalization".into(),
            defined_at: artifactstore::domain::Clock::now(&artifactstore::domain::SystemClock),
        })],
    )
    .await
    .unwrap();
    artifactstore::events::commit(tx, &recorded, registry.sequencer())
        .await
        .unwrap();
}

/// A finalized package of the `instant` class (due at once: see [`define_instant_class`])
/// holding one file `f` of `size` bytes of its own (from `seed`).
pub async fn due_package(registry: &Registry, subject: &str, seed: u64, size: usize) {
    let tenant = artifactstore::domain::TenantId::default_tenant();
    let p = registry
        .create_package(
            &tenant,
            artifactstore::registry::NewPackage {
                producer: "p".into(),
                subject: subject.into(),
                retention_class: Some("instant".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    registry
        .ingest_file(
            &tenant,
            p.id,
            ingest_request("f"),
            body(&random_bytes(size, seed), size.min(3000)),
        )
        .await
        .unwrap();
    registry
        .finalize_package(&tenant, p.id, None)
        .await
        .unwrap();
}

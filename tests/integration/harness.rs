//! Test harness: real PostgreSQL (a private cluster started by the library's own code, or
//! `ARTIFACTSTORE_TEST_DATABASE_URL`), one fresh database per test cloned from a migrated
//! template, and a registry over a temporary local store.

use artifactstore::Registry;
use artifactstore::db::cluster::{ClusterOptions, ManagedCluster};
use artifactstore::storage::{Backends, local::LocalStore};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

static SERVER_URL: OnceCell<String> = OnceCell::const_new();
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// Where the shared test cluster lives (kept between runs, so later runs start in ms).
pub fn test_cluster_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-postgres")
}

/// A URL to the `postgres` database of the test server.
async fn server_url() -> &'static str {
    SERVER_URL
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("ARTIFACTSTORE_TEST_DATABASE_URL") {
                return url;
            }
            let cluster = ManagedCluster::start_or_reuse(ClusterOptions {
                cluster_dir: None,
                dir: test_cluster_dir(),
                unsafe_fast: true,
            })
            .await
            .expect("start the test PostgreSQL cluster");
            let url = cluster.url("postgres");
            // Left running for the next test process and run; `.ci/run` stops it.
            std::mem::forget(cluster);
            url
        })
        .await
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{database}?{q}"),
        None => format!("{host_part}/{database}"),
    }
}

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!(
                "artifactstore_tmpl_{}",
                artifactstore::db::migrations_fingerprint()
            );
            let admin = artifactstore::db::connect(server_url().await)
                .await
                .unwrap();
            // Test processes may race to build it: one builds, under a lock, the rest wait.
            admin
                .execute("SELECT pg_advisory_lock(72001)", &[])
                .await
                .unwrap();
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .unwrap()
                .is_some();
            if !exists {
                let building = format!("{name}_building");
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                    .await
                    .unwrap();
                admin
                    .batch_execute(&format!("CREATE DATABASE {building}"))
                    .await
                    .unwrap();
                artifactstore::db::migrate(&with_database(server_url().await, &building))
                    .await
                    .unwrap();
                admin
                    .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .await
                    .unwrap();
            }
            admin
                .execute("SELECT pg_advisory_unlock(72001)", &[])
                .await
                .unwrap();
            name
        })
        .await
}

/// A fresh, migrated database, dropped when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    server_url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let template = template().await;
        let server = server_url().await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = artifactstore::db::connect(server).await.unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .unwrap();
        TestDb {
            url: with_database(server, &name),
            name,
            server_url: server.to_owned(),
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        artifactstore::db::connect(&self.url).await.unwrap()
    }

    pub fn pool(&self, size: usize) -> deadpool_postgres::Pool {
        artifactstore::db::pool(&self.url, size).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = artifactstore::db::connect(&server).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

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
        relative_path: artifactstore::model::RelativePath::new(path).unwrap(),
        media_type: None,
        expected_digest: None,
        replace: false,
    }
}

/// A new open package of the default tenant (producer `p`, subject `s`).
pub async fn package(registry: &Registry) -> artifactstore::registry::Package {
    registry
        .create_package(
            &artifactstore::model::TenantId::default_tenant(),
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

impl artifactstore::model::Clock for TestClock {
    fn now(&self) -> artifactstore::model::Timestamp {
        artifactstore::model::Timestamp::from_datetime(
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
    use artifactstore::events::{ClassDefined, DomainEvent, RetentionEvent};
    let mut client = registry.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    artifactstore::events::record(
        &tx,
        vec![DomainEvent::Retention(RetentionEvent::ClassDefined(
            ClassDefined {
                name: "instant".into(),
                duration_seconds: Some(0),
                description: "due at finalization".into(),
                defined_at: artifactstore::model::Clock::now(&artifactstore::model::SystemClock),
            },
        ))],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// The JSON body of a response that must have status `expect` (the body is shown otherwise);
/// `null` when the body is not JSON.
pub async fn json_of(resp: reqwest::Response, expect: reqwest::StatusCode) -> serde_json::Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, expect, "{text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// The bytes of file `id` (its download must answer 200), as `token` downloads them from the
/// server at `base`.
pub async fn download_file(http: &reqwest::Client, base: &str, token: &str, id: &str) -> Vec<u8> {
    let resp = http
        .get(format!("{base}/files/{id}/download"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "downloading {id}");
    resp.bytes().await.unwrap().to_vec()
}

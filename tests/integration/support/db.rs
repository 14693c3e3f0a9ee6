//! Real PostgreSQL for the tests: a private cluster started by the library's own code (or
//! `ARTIFACTSTORE_TEST_DATABASE_URL`), one fresh database per test cloned from a migrated
//! template.

use artifactstore::db::cluster::{ClusterOptions, ManagedCluster};
use std::path::PathBuf;
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
        Self::create(template().await).await
    }

    /// A fresh database with no tables at all (what a new deployment's servers first meet).
    pub async fn empty() -> Self {
        Self::create("template0").await
    }

    async fn create(template: &str) -> Self {
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

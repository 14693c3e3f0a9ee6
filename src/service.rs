//! Wiring the parts together from settings: database (given or private), migrations,
//! backends, registry. Used by `serve`, `migrate`, `replay` and the benchmarks.

use crate::config::Settings;
use crate::db::cluster::{ClusterOptions, DATABASE, ManagedCluster};
use crate::error::Result;
use crate::registry::Registry;

/// A database to talk to, and the private cluster behind it if we run one.
pub struct DatabaseHandle {
    /// Connection URL.
    pub url: String,
    cluster: Option<ManagedCluster>,
}

impl DatabaseHandle {
    /// `ARTIFACTSTORE_DATABASE_URL` if set, else the private cluster under the data directory
    /// (started, or reused if already running).
    pub async fn open(settings: &Settings) -> Result<Self> {
        match &settings.database_url {
            Some(url) => Ok(DatabaseHandle {
                url: url.0.clone(),
                cluster: None,
            }),
            None => {
                let cluster = ManagedCluster::start_or_reuse(ClusterOptions {
                    dir: settings.data_dir.clone(),
                    cluster_dir: settings.postgres_dir.clone(),
                    unsafe_fast: false,
                })
                .await?;
                cluster.ensure_database(DATABASE).await?;
                Ok(DatabaseHandle {
                    url: cluster.url(DATABASE),
                    cluster: Some(cluster),
                })
            }
        }
    }

    /// [`open`](Self::open) for commands that read an existing store: without a database
    /// URL, a data directory that holds no private cluster is refused rather than given a new,
    /// empty one (a mistyped `--data-dir` would otherwise "verify" nothing and succeed).
    pub async fn open_existing(settings: &Settings) -> Result<Self> {
        Self::refuse_missing(settings)?;
        Self::open(settings).await
    }

    fn refuse_missing(settings: &Settings) -> Result<()> {
        if settings.database_url.is_none() {
            let cluster = settings
                .postgres_dir
                .clone()
                .unwrap_or_else(|| settings.data_dir.join("postgres"));
            if !cluster.join("pgdata").join("PG_VERSION").exists() {
                return Err(crate::Error::InvalidInput(format!(
                    "{} holds no artifact store (no database under {}): give the data directory \
                     `serve` uses (--data-dir / ARTIFACTSTORE_DATA_DIR), or \
                     ARTIFACTSTORE_DATABASE_URL",
                    settings.data_dir.display(),
                    cluster.display()
                )));
            }
        }
        Ok(())
    }

    /// Stops the private cluster if this process started it.
    pub fn close(mut self) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.stop();
        }
    }
}

/// A running service's library half.
pub struct Service {
    /// The registry.
    pub registry: Registry,
    /// The database.
    pub database: DatabaseHandle,
}

impl Service {
    /// Opens the database, migrates if asked, and builds the registry with the local backend.
    pub async fn start(settings: &Settings, migrate: bool) -> Result<Self> {
        let database = DatabaseHandle::open(settings).await?;
        if migrate {
            let applied = crate::db::migrate(&database.url).await?;
            if applied > 0 {
                tracing::info!(applied, "applied database migrations");
            }
        }
        let pool = crate::db::pool_with_timeout(
            &database.url,
            settings.db_pool_size,
            settings.db_pool_timeout,
        )?;
        let backends = settings.storage.open(
            settings.storage_default.as_deref(),
            &settings.storage_local_root,
        )?;
        let registry = Registry::new(pool, backends)
            .with_limits(settings.limits)
            .with_upload_dir(settings.data_dir.join("uploads"));
        let roots = settings.storage.local_roots(
            &settings.storage_local_root,
            settings.storage_default.as_deref(),
        );
        for (id, root, written) in roots {
            registry.check_local_root(&id, &root, written).await?;
        }
        registry.sequencer().start();
        Ok(Service { registry, database })
    }

    /// [`start`](Self::start) for commands that read an existing store (`verify`, `storage
    /// migrate`), refusing a data directory without one ([`DatabaseHandle::open_existing`]).
    pub async fn start_existing(settings: &Settings) -> Result<Self> {
        DatabaseHandle::refuse_missing(settings)?;
        Self::start(settings, false).await
    }

    /// Releases the database (stopping the private cluster if we started it), once the events
    /// this process committed are numbered (a short-lived command's would otherwise wait for
    /// another process's pass).
    pub async fn shutdown(self) {
        self.registry.sequencer().settle().await;
        self.registry.pool().close();
        self.database.close();
    }
}

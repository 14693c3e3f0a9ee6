//! Health of the database and every backend.

use crate::registry::Registry;
use crate::storage::BackendHealth;

/// What a health check found.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// Latest committed event sequence, or why the database is unusable.
    pub database: Result<i64, String>,
    /// Each backend.
    pub backends: Vec<BackendHealth>,
    /// Stored copies verification found damaged, and copies a backend lost (when the
    /// database answered).
    pub damaged_copies: Option<(u64, u64)>,
    /// The filesystems the server writes to (local backends, upload spools).
    pub disk: Vec<crate::registry::DiskSpace>,
}

impl HealthReport {
    /// True when the database and every backend are usable.
    pub fn healthy(&self) -> bool {
        self.database.is_ok() && self.backends.iter().all(|b| b.healthy)
    }

    /// Usable, but some stored copies are known to be damaged or lost, or a disk is below its
    /// minimum free space (new writes are refused).
    pub fn degraded(&self) -> bool {
        self.damaged_copies
            .is_some_and(|(failed, missing)| failed + missing > 0)
            || self.disk.iter().any(|d| d.low)
    }
}

/// Checks the database (with a 5 s bound) and every backend.
pub async fn check(registry: &Registry) -> HealthReport {
    let database = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let client = registry.pool().get().await.map_err(|e| e.to_string())?;
        crate::events::latest_sequence(&**client)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("timed out after 5 s".into()))
    // Health is anonymous: log the cause, report only that the database is unusable.
    .map_err(|cause: String| {
        tracing::warn!(%cause, "health check: database unusable");
        "database unreachable or failing".to_owned()
    });

    let backends =
        futures::future::join_all(registry.backends().all().iter().map(|b| b.health())).await;
    let damaged_copies = match database {
        Ok(_) => registry.unhealthy_location_counts().await.ok(),
        Err(_) => None,
    };
    HealthReport {
        database,
        backends,
        damaged_copies,
        disk: registry.disk_space().await,
    }
}

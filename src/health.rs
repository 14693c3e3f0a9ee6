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

/// What a readiness probe found: each part a ready server needs, and why one is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// What is not usable, one phrase each (empty: ready).
    pub not_ready: Vec<String>,
}

impl Readiness {
    /// Ready for traffic.
    pub fn ready(&self) -> bool {
        self.not_ready.is_empty()
    }
}

/// Readiness checks of one process, at most one at a time and at most one a second: probes are
/// anonymous, so however many arrive, the database and the backend see one check a second
/// (callers while one runs wait for it; callers within a second of it get its answer).
pub struct ReadinessProbe {
    registry: Registry,
    bus: crate::events::EventBus,
    last: tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>,
}

/// How long a readiness answer is reused.
const READINESS_REUSED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl ReadinessProbe {
    /// Checks of the registry's database and default backend and of the bus's listener.
    pub fn new(registry: Registry, bus: crate::events::EventBus) -> Self {
        ReadinessProbe {
            registry,
            bus,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether this process can serve (see [`readiness`]); shutting down is seen at once.
    pub async fn check(&self) -> Readiness {
        let mut last = self.last.lock().await;
        let readiness = match &*last {
            Some((at, readiness)) if at.elapsed() < READINESS_REUSED_FOR => readiness.clone(),
            _ => {
                let readiness = readiness(&self.registry, &self.bus).await;
                *last = Some((std::time::Instant::now(), readiness.clone()));
                readiness
            }
        };
        drop(last);
        if self.bus.is_closed() && readiness.ready() {
            return Readiness {
                not_ready: vec!["the server is shutting down".to_owned()],
            };
        }
        readiness
    }

    /// Whether the process is shutting down.
    pub fn shutting_down(&self) -> bool {
        self.bus.is_closed()
    }
}

/// Whether this process can serve: the database answers a query, the event listener is
/// connected, the default backend is reachable, and the process is not shutting down. Bounded
/// in time (2 s per check, checked at once), so a probe never hangs on a dead dependency.
/// Probes go through [`ReadinessProbe`].
pub async fn readiness(registry: &Registry, bus: &crate::events::EventBus) -> Readiness {
    let bound = std::time::Duration::from_secs(2);
    let database = tokio::time::timeout(bound, async {
        let client = registry.pool().get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let backend = registry.backends().default_backend().clone();
    let backend_health = tokio::time::timeout(bound, async move { backend.health().await });
    let (database, backend_health) = futures::join!(database, backend_health);
    let mut not_ready = Vec::new();
    if bus.is_closed() {
        not_ready.push("the server is shutting down".to_owned());
    }
    match database {
        Ok(Ok(())) => {}
        Ok(Err(cause)) => {
            tracing::warn!(%cause, "readiness: database unusable");
            not_ready.push("the database is unreachable or failing".to_owned());
        }
        Err(_) => not_ready.push("the database did not answer within 2 s".to_owned()),
    }
    if !bus.status().listening {
        not_ready.push("the event listener is not connected".to_owned());
    }
    let id = registry.backends().default_backend().id().to_owned();
    match backend_health {
        Ok(health) if health.healthy => {}
        Ok(health) => {
            tracing::warn!(backend = %id, detail = %health.detail, "readiness: backend unusable");
            not_ready.push("the default storage backend is unusable".to_owned());
        }
        Err(_) => {
            tracing::warn!(backend = %id, "readiness: backend did not answer within 2 s");
            not_ready.push("the default storage backend did not answer within 2 s".to_owned());
        }
    }
    Readiness { not_ready }
}

//! `GET /health`: the service's status for anyone; the details behind it for admins.

use super::AppState;
use super::problem::{Problem, ProblemBody};
use super::security::Auth;
use crate::auth::Scope;
use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use std::sync::Arc;

pub struct HealthApi;

/// Overall health: `status` for anyone; the rest only for an admin token.
#[derive(Debug, Clone, Object)]
pub struct Health {
    /// `ok`; `degraded` when stored copies are known to be damaged or lost (see
    /// `GET /storage/locations?status=failed`) or a disk is below its minimum free space
    /// (writes refused); `unavailable` when the database or a backend cannot be used.
    pub status: String,
    /// Server version (admins only).
    #[oai(skip_serializing_if_is_none)]
    pub version: Option<String>,
    /// Database status (admins only).
    #[oai(skip_serializing_if_is_none)]
    pub database: Option<DatabaseHealth>,
    /// Each storage backend (admins only).
    #[oai(skip_serializing_if_is_none)]
    pub backends: Option<Vec<BackendHealthView>>,
    /// Stored copies verification found damaged (`failed`) or lost (`missing`) (admins only).
    #[oai(skip_serializing_if_is_none)]
    pub storage: Option<StorageHealth>,
    /// The event stream of this server process (admins only).
    #[oai(skip_serializing_if_is_none)]
    pub events: Option<EventsHealth>,
    /// The filesystems this server writes to: local backends and the upload spools (admins
    /// only). Below `ARTIFACTSTORE_MIN_FREE_BYTES` new writes are refused (507) and `status`
    /// is `degraded`.
    #[oai(skip_serializing_if_is_none)]
    pub disk: Option<Vec<DiskHealth>>,
}

/// A filesystem this server writes to.
#[derive(Debug, Clone, Object)]
pub struct DiskHealth {
    /// A backend's id, or `uploads` (the upload spools).
    pub name: String,
    /// Free bytes.
    pub free_bytes: u64,
    /// Below the minimum free space: new writes are refused.
    pub low: bool,
}

/// The event stream of this server process.
#[derive(Debug, Clone, Object)]
pub struct EventsHealth {
    /// Whether its one LISTEN connection is up (while it reconnects, long-polls still answer,
    /// only later).
    pub listening: bool,
    /// `GET /events` requests open now, of every tenant (nearly all of them waiting for an
    /// event). For the operator only.
    #[oai(skip_serializing_if_is_none)]
    pub waiting_requests: Option<u64>,
}

/// Known-bad stored copies.
#[derive(Debug, Clone, Object)]
pub struct StorageHealth {
    /// Copies whose bytes differ from their address.
    pub failed_copies: u64,
    /// Copies a backend lost.
    pub missing_copies: u64,
}

/// Database status.
#[derive(Debug, Clone, Object)]
pub struct DatabaseHealth {
    /// Whether a query succeeded.
    pub ok: bool,
    /// Highest committed event sequence, when reachable (of every tenant: for the operator
    /// only).
    #[oai(skip_serializing_if_is_none)]
    pub latest_sequence: Option<i64>,
    /// Error summary when not ok.
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
}

/// One backend.
#[derive(Debug, Clone, Object)]
pub struct BackendHealthView {
    /// Backend id.
    pub id: String,
    /// Whether it is usable.
    pub healthy: bool,
    /// Summary.
    pub detail: String,
    /// Free bytes, where known.
    #[oai(skip_serializing_if_is_none)]
    pub free_bytes: Option<u64>,
    /// Capacity, where known.
    #[oai(skip_serializing_if_is_none)]
    pub total_bytes: Option<u64>,
}

#[derive(ApiResponse)]
enum HealthResponse {
    /// Everything works.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The database or a backend is unavailable; look again after `Retry-After` seconds.
    #[oai(status = 503)]
    Unavailable(Json<Health>, #[oai(header = "Retry-After")] u64),
}

/// A probe's answer.
#[derive(Debug, Clone, Object)]
pub struct Probe {
    /// `live` or `ready`.
    pub status: String,
}

#[derive(ApiResponse)]
enum ProbeResponse {
    /// Live, or ready.
    #[oai(status = 200)]
    Ok(Json<Probe>),
    /// Not live (shutting down) or not ready; `detail` names each part that is not.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(ProblemBody, #[oai(header = "Retry-After")] u64),
}

impl ProbeResponse {
    fn unavailable(detail: String) -> Self {
        let status = poem::http::StatusCode::SERVICE_UNAVAILABLE;
        ProbeResponse::Unavailable(
            ProblemBody(Problem::new(status, detail)),
            super::problem::retry_after(status),
        )
    }
}

#[OpenApi(tag = "super::ApiTags::System")]
impl HealthApi {
    /// Liveness probe
    ///
    /// 200 while the process serves, 503 once it is shutting down. Checks nothing else (a
    /// database or storage outage must not get the process restarted): use `/readyz` to take
    /// it out of a load balancer. Anonymous.
    #[oai(path = "/livez", method = "get", operation_id = "getLiveness")]
    async fn livez(&self, state: Data<&Arc<AppState>>) -> ProbeResponse {
        if state.events.is_closed() {
            ProbeResponse::unavailable("the server is shutting down".into())
        } else {
            ProbeResponse::Ok(Json(Probe {
                status: "live".into(),
            }))
        }
    }

    /// Readiness probe
    ///
    /// 200 when the database answers, the event listener is connected and the default storage
    /// backend is usable; else 503, the problem's `detail` naming each part that is not (also
    /// while shutting down). Each check is bounded to 2 s. Anonymous.
    #[oai(path = "/readyz", method = "get", operation_id = "getReadiness")]
    async fn readyz(&self, state: Data<&Arc<AppState>>) -> ProbeResponse {
        let readiness = state.readiness.check().await;
        if readiness.ready() {
            ProbeResponse::Ok(Json(Probe {
                status: "ready".into(),
            }))
        } else {
            ProbeResponse::unavailable(format!("not ready: {}", readiness.not_ready.join("; ")))
        }
    }

    /// Service health
    ///
    /// 200 when the database and every backend work (`status` is `degraded` when stored
    /// copies are known to be damaged or lost), else 503 with the same body. Anyone gets
    /// `status`; an admin token also gets the details (version, database, backends, the event
    /// stream), which would tell an outsider too much; what counts every tenant's activity
    /// (the latest event sequence, open long-polls, damaged copies) only the operator (an
    /// admin of the `system` tenant) gets.
    #[oai(path = "/health", method = "get", operation_id = "getHealth")]
    async fn health(&self, state: Data<&Arc<AppState>>, auth: Auth) -> HealthResponse {
        let caller = state.caller(&auth);
        let details = caller.as_ref().is_some_and(|p| p.allows(Scope::Admin));
        let operator = caller.as_ref().is_some_and(|p| p.operator);
        let health = crate::health::check(&state.registry).await;
        let bus = state.events.status();
        let status = if !health.healthy() {
            "unavailable"
        } else if health.degraded() {
            "degraded"
        } else {
            "ok"
        };
        let mut report = Health {
            status: status.into(),
            disk: Some(
                health
                    .disk
                    .iter()
                    .map(|d| DiskHealth {
                        name: d.name.clone(),
                        free_bytes: d.free_bytes,
                        low: d.low,
                    })
                    .collect(),
            ),
            storage: health
                .damaged_copies
                .filter(|_| operator)
                .map(|(failed, missing)| StorageHealth {
                    failed_copies: failed,
                    missing_copies: missing,
                }),
            events: Some(EventsHealth {
                listening: bus.listening,
                waiting_requests: operator.then_some(bus.waiting as u64),
            }),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            database: Some(DatabaseHealth {
                ok: health.database.is_ok(),
                latest_sequence: health.database.as_ref().ok().copied().filter(|_| operator),
                detail: health.database.as_ref().err().cloned(),
            }),
            backends: Some(
                health
                    .backends
                    .into_iter()
                    .map(|b| BackendHealthView {
                        id: b.backend_id,
                        healthy: b.healthy,
                        detail: b.detail,
                        free_bytes: b.free_bytes,
                        total_bytes: b.total_bytes,
                    })
                    .collect(),
            ),
        };
        if !details {
            report = Health {
                status: report.status,
                disk: None,
                version: None,
                database: None,
                backends: None,
                storage: None,
                events: None,
            };
        }
        if status != "unavailable" {
            HealthResponse::Ok(Json(report))
        } else {
            HealthResponse::Unavailable(
                Json(report),
                super::problem::retry_after(poem::http::StatusCode::SERVICE_UNAVAILABLE),
            )
        }
    }
}

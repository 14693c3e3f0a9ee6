//! The metrics listener: `GET /metrics` (the Prometheus exposition of
//! [`crate::metrics`]), and `/livez` and `/readyz` for processes without an API (the worker),
//! on an address of its own, never the API's.

use crate::metrics::{Exporter, bus, database, pool};
use std::sync::Arc;
use std::time::Duration;

/// The probes a metrics listener answers besides `/metrics`, for processes without an API.
#[derive(Clone)]
pub struct Probes {
    /// The registry (its pool, for the gauges).
    pub registry: crate::registry::Registry,
    /// The event bus (its listener, for the gauges).
    pub bus: crate::events::EventBus,
    /// Readiness checks, shared with the API's `/readyz`.
    pub readiness: Arc<crate::health::ReadinessProbe>,
    /// `serve` or `worker`: said in the probes' answers, so that a probe that reaches
    /// another process than the one it meant (two on one host) can tell.
    pub process: &'static str,
}

impl Probes {
    /// The gauges this process's state gives (the pool, the bus, the database's head and
    /// upload sessions), set before every scrape.
    pub fn sample_into(&self, exporter: &Exporter) {
        let probes = self.clone();
        exporter.sample(Box::new(move || {
            let probes = probes.clone();
            Box::pin(async move {
                pool(probes.registry.pool().status());
                bus(&probes.bus);
                database(probes.registry.pool()).await;
            })
        }));
    }

    async fn livez(&self) -> poem::Response {
        if self.readiness.shutting_down() {
            unavailable("the process is shutting down".into())
        } else {
            self.ok("live")
        }
    }

    async fn readyz(&self) -> poem::Response {
        let readiness = self.readiness.check().await;
        if readiness.ready() {
            self.ok("ready")
        } else {
            unavailable(format!("not ready: {}", readiness.not_ready.join("; ")))
        }
    }

    fn ok(&self, status: &str) -> poem::Response {
        poem::Response::builder()
            .content_type("application/json")
            .body(serde_json::json!({ "status": status, "process": self.process }).to_string())
    }
}

fn unavailable(detail: String) -> poem::Response {
    let status = poem::http::StatusCode::SERVICE_UNAVAILABLE;
    let mut resp = poem::IntoResponse::into_response(super::problem::Problem::new(status, detail));
    resp.headers_mut().insert(
        poem::http::header::RETRY_AFTER,
        super::problem::retry_after(status).into(),
    );
    resp
}

/// Serves `GET /metrics`, `/livez` and `/readyz` (nothing else) on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    exporter: Arc<Exporter>,
    probes: Probes,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let live = probes.clone();
    let ready = probes;
    let endpoint = poem::Route::new()
        .at(
            "/metrics",
            poem::get(poem::endpoint::make(move |_| {
                let exporter = exporter.clone();
                async move {
                    poem::Response::builder()
                        .content_type("text/plain; version=0.0.4; charset=utf-8")
                        .body(exporter.render().await)
                }
            })),
        )
        .at(
            "/livez",
            poem::get(poem::endpoint::make(move |_| {
                let live = live.clone();
                async move { live.livez().await }
            })),
        )
        .at(
            "/readyz",
            poem::get(poem::endpoint::make(move |_| {
                let ready = ready.clone();
                async move { ready.readyz().await }
            })),
        );
    // A scraper and a prober or two: a handful of connections, quick heads.
    let limits = crate::config::HttpLimits {
        header_read_timeout: Duration::from_secs(10),
        body_idle_timeout: Duration::from_secs(10),
        max_connections: 16,
    };
    super::serve::run(listener, endpoint, shutdown, Duration::from_secs(1), limits).await
}

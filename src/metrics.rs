//! Metrics: the series this process exports, recorded through the `metrics` facade where things
//! happen (HTTP requests, ingests, downloads, commits, backend operations, worker jobs) and
//! rendered in the Prometheus text format by an [`Exporter`], served at `GET /metrics` on a
//! listener of its own (`api::metrics_listener`), never beside the API.
//!
//! Until an exporter is installed, recording costs next to nothing (the facade's no-op
//! recorder): library users and one-shot commands pay nothing for it.
//!
//! Label values come from closed sets (operation ids, status codes, event types, backend ids,
//! outcomes): never a request path or an id, so the number of series stays bounded whatever
//! clients send.

use futures::future::BoxFuture;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// `artifactstore_http_requests_total{operation,status}`.
pub const HTTP_REQUESTS: &str = "artifactstore_http_requests_total";
/// `artifactstore_http_request_duration_seconds{operation}` (histogram; until the response
/// head is sent).
pub const HTTP_REQUEST_DURATION: &str = "artifactstore_http_request_duration_seconds";
/// `artifactstore_http_requests_in_flight` (gauge).
pub const HTTP_IN_FLIGHT: &str = "artifactstore_http_requests_in_flight";
/// `artifactstore_ingested_bytes_total`: bytes of files recorded (stored or deduplicated).
pub const INGESTED_BYTES: &str = "artifactstore_ingested_bytes_total";
/// `artifactstore_served_bytes_total`: bytes of file contents sent to clients.
pub const SERVED_BYTES: &str = "artifactstore_served_bytes_total";
/// `artifactstore_ingests_total{outcome}`: `stored`, `deduplicated`, `refused` (the client's
/// request was refused: quota, limits, digest, state) or `failed` (a server-side fault: the
/// database, a backend, a full disk).
pub const INGESTS: &str = "artifactstore_ingests_total";
/// `artifactstore_events_head_sequence` (gauge): the latest committed sequence.
pub const EVENTS_HEAD: &str = "artifactstore_events_head_sequence";
/// `artifactstore_events_listener_sequence` (gauge): the latest sequence this process's
/// listener has been told of; the head minus this is how far the event bus lags.
pub const EVENTS_LISTENER_SEQUENCE: &str = "artifactstore_events_listener_sequence";
/// `artifactstore_events_committed_total{type}`: events this process committed.
pub const EVENTS_COMMITTED: &str = "artifactstore_events_committed_total";
/// `artifactstore_event_listener_up` (gauge, 0/1).
pub const EVENT_LISTENER_UP: &str = "artifactstore_event_listener_up";
/// `artifactstore_long_polls` (gauge): `GET /events` requests open now.
pub const LONG_POLLS: &str = "artifactstore_long_polls";
/// `artifactstore_db_pool_connections{state}` (gauge): `in_use`, `idle`, `waiting`.
pub const DB_POOL: &str = "artifactstore_db_pool_connections";
/// `artifactstore_db_pool_max_connections` (gauge).
pub const DB_POOL_MAX: &str = "artifactstore_db_pool_max_connections";
/// `artifactstore_backend_operations_total{backend,operation,outcome}`.
pub const BACKEND_OPERATIONS: &str = "artifactstore_backend_operations_total";
/// `artifactstore_backend_operation_duration_seconds{backend,operation}` (histogram).
pub const BACKEND_DURATION: &str = "artifactstore_backend_operation_duration_seconds";
/// `artifactstore_upload_sessions` (gauge): open upload sessions (all tenants, all servers).
pub const UPLOAD_SESSIONS: &str = "artifactstore_upload_sessions";
/// `artifactstore_worker_jobs_total{job,outcome}`: jobs `expiry`, `collection`, `orphan_sweep`,
/// `upload_sweep`, `staging_sweep` (outcomes `done`: items done, `failed`: failed runs) and
/// `verification` (copies `ok`, `damaged`, `missing`, `unreadable`; `failed` runs).
pub const WORKER_JOBS: &str = "artifactstore_worker_jobs_total";
/// `artifactstore_worker_passes_total{outcome}`: passes of the background jobs.
pub const WORKER_PASSES: &str = "artifactstore_worker_passes_total";
/// `artifactstore_events_unnumbered` (gauge): committed events waiting for their number.
pub const EVENTS_UNNUMBERED: &str = "artifactstore_events_unnumbered";
/// `artifactstore_sequencer_passes_total{outcome}`: numbering passes of this process.
pub const SEQUENCER_PASSES: &str = "artifactstore_sequencer_passes_total";
/// `artifactstore_quota_refusals_total{quota}`.
pub const QUOTA_REFUSALS: &str = "artifactstore_quota_refusals_total";
/// `artifactstore_build_info{version}` (gauge, always 1).
pub const BUILD_INFO: &str = "artifactstore_build_info";

/// Every series name this process exports (what the Grafana dashboard may use).
pub const SERIES: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    HTTP_IN_FLIGHT,
    INGESTED_BYTES,
    SERVED_BYTES,
    INGESTS,
    EVENTS_HEAD,
    EVENTS_LISTENER_SEQUENCE,
    EVENTS_COMMITTED,
    EVENTS_UNNUMBERED,
    SEQUENCER_PASSES,
    EVENT_LISTENER_UP,
    LONG_POLLS,
    DB_POOL,
    DB_POOL_MAX,
    BACKEND_OPERATIONS,
    BACKEND_DURATION,
    UPLOAD_SESSIONS,
    WORKER_JOBS,
    WORKER_PASSES,
    QUOTA_REFUSALS,
    BUILD_INFO,
];

/// Histogram buckets (seconds): from a cached read to a large upload.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// An ingest's outcome, for [`INGESTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// New bytes were stored.
    Stored,
    /// The bytes were held already (a dedup, or a link).
    Deduplicated,
    /// The request was refused (a client's error or a limit).
    Refused,
    /// A server-side fault (the database, a backend).
    Failed,
}

impl IngestOutcome {
    /// The outcome of a failed ingest.
    pub fn of_error(error: &crate::Error) -> Self {
        use crate::Error;
        match error {
            // This server could not take the bytes: its disk, its database, its backends.
            Error::Storage { .. }
            | Error::Database(_)
            | Error::Integrity(_)
            | Error::InsufficientStorage(_) => IngestOutcome::Failed,
            _ => IngestOutcome::Refused,
        }
    }

    fn label(self) -> &'static str {
        match self {
            IngestOutcome::Stored => "stored",
            IngestOutcome::Deduplicated => "deduplicated",
            IngestOutcome::Refused => "refused",
            IngestOutcome::Failed => "failed",
        }
    }
}

/// Counts one ingest (and its bytes, when it recorded a file).
pub fn ingest(outcome: IngestOutcome, bytes: u64) {
    counter!(INGESTS, "outcome" => outcome.label()).increment(1);
    if matches!(outcome, IngestOutcome::Stored | IngestOutcome::Deduplicated) {
        counter!(INGESTED_BYTES).increment(bytes);
    }
}

/// Counts a failed ingest, refused or failed by the error's kind.
pub fn ingest_error(error: &crate::Error) {
    ingest(IngestOutcome::of_error(error), 0);
}

/// Counts a request refused for a tenant's quota (when it is answered).
pub fn quota_refusal(error: &crate::Error) {
    if let crate::Error::OverQuota { quota, .. } = error {
        counter!(QUOTA_REFUSALS, "quota" => quota.name()).increment(1);
    }
}

/// `stream`, its bytes counted as served ([`SERVED_BYTES`]) as they pass: once, when it ends
/// or is dropped (a client that hangs up is counted for what it took).
pub fn count_served<S>(stream: S) -> impl futures::Stream<Item = S::Item> + Send
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin,
{
    count_served_then(stream, |_, _| {})
}

/// [`count_served`], then `then(bytes sent, whether the stream ended)` once, when it ends or
/// is dropped (`false`: the client went away, or the bytes failed, before the end).
pub fn count_served_then<S, F>(stream: S, then: F) -> impl futures::Stream<Item = S::Item> + Send
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin,
    F: FnOnce(u64, bool) + Send + 'static,
{
    type Then = Box<dyn FnOnce(u64, bool) + Send>;
    struct Served<S> {
        inner: S,
        sent: u64,
        ended: bool,
        then: Option<Then>,
    }
    impl<S> Drop for Served<S> {
        fn drop(&mut self) {
            counter!(SERVED_BYTES).increment(self.sent);
            if let Some(then) = self.then.take() {
                then(self.sent, self.ended);
            }
        }
    }
    impl<S> futures::Stream for Served<S>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    {
        type Item = S::Item;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
            match &polled {
                std::task::Poll::Ready(Some(Ok(chunk))) => self.sent += chunk.len() as u64,
                std::task::Poll::Ready(None) => self.ended = true,
                _ => {}
            }
            polled
        }
    }
    Served {
        inner: stream,
        sent: 0,
        ended: false,
        then: Some(Box::new(then) as Then),
    }
}

/// Counts committed events by type.
pub fn committed<'a>(types: impl IntoIterator<Item = &'a str>) {
    for t in types {
        counter!(EVENTS_COMMITTED, "type" => t.to_owned()).increment(1);
    }
}

/// Counts a numbering pass: `numbered` (it numbered events), `idle` (none waited) or `failed`.
pub fn sequencer_pass(outcome: &'static str) {
    counter!(SEQUENCER_PASSES, "outcome" => outcome).increment(1);
}

/// Counts `n` units of work of a background job with an outcome (`done`, `failed`, ...).
pub fn worker_jobs(job: &'static str, outcome: &'static str, n: u64) {
    if n > 0 {
        counter!(WORKER_JOBS, "job" => job, "outcome" => outcome).increment(n);
    }
}

/// Counts one pass of the background jobs.
pub fn worker_pass(ok: bool) {
    counter!(WORKER_PASSES, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// Sets the pool gauges from deadpool's status.
pub fn pool(status: deadpool_postgres::Status) {
    let in_use = status.size.saturating_sub(status.available);
    gauge!(DB_POOL, "state" => "in_use").set(in_use as f64);
    gauge!(DB_POOL, "state" => "idle").set(status.available as f64);
    gauge!(DB_POOL, "state" => "waiting").set(status.waiting as f64);
    gauge!(DB_POOL_MAX).set(status.max_size as f64);
}

/// Sets the event bus gauges.
pub fn bus(bus: &crate::events::EventBus) {
    let status = bus.status();
    gauge!(EVENT_LISTENER_UP).set(if status.listening { 1.0 } else { 0.0 });
    gauge!(LONG_POLLS).set(status.waiting as f64);
    gauge!(EVENTS_LISTENER_SEQUENCE).set(bus.latest() as f64);
}

/// Sets the gauges read from the database (the log's head and numbering backlog, open upload
/// sessions). Bounded in
/// time: a scrape never waits long on a database that does not answer (the gauges then keep
/// their last values, and the pool gauges show why).
pub async fn database(pool: &deadpool_postgres::Pool) {
    let read = async {
        let client = pool.get().await.ok()?;
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(max(sequence), 0) FROM events), \
                        (SELECT count(*) FROM uploads), \
                        (SELECT count(*) FROM events WHERE sequence IS NULL)",
                &[],
            )
            .await
            .ok()?;
        Some((
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        ))
    };
    if let Ok(Some((head, sessions, unnumbered))) =
        tokio::time::timeout(Duration::from_secs(2), read).await
    {
        gauge!(EVENTS_HEAD).set(head as f64);
        gauge!(UPLOAD_SESSIONS).set(sessions as f64);
        gauge!(EVENTS_UNNUMBERED).set(unnumbered as f64);
    }
}

/// Something that sets gauges just before a scrape renders them.
pub type Sampler = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The installed recorder's handle and the samplers run at every scrape.
pub struct Exporter {
    handle: PrometheusHandle,
    samplers: Mutex<Vec<Arc<Sampler>>>,
}

static EXPORTER: OnceLock<Arc<Exporter>> = OnceLock::new();

impl Exporter {
    /// Installs the process's Prometheus recorder (once; later calls answer the same
    /// exporter) and describes every series.
    pub fn install() -> Arc<Exporter> {
        EXPORTER
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Suffix("_duration_seconds".into()),
                        DURATION_BUCKETS,
                    )
                    .expect("buckets are not empty")
                    .build_recorder();
                let handle = recorder.handle();
                // Fails only when another recorder is installed (an embedding program's): its
                // recorder then gets the data, and this handle renders what it has.
                let _ = metrics::set_global_recorder(recorder);
                describe();
                gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                Arc::new(Exporter {
                    handle,
                    samplers: Mutex::default(),
                })
            })
            .clone()
    }

    /// Runs `sampler` before every scrape.
    pub fn sample(&self, sampler: Sampler) {
        self.samplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(sampler));
    }

    /// The exposition: samplers run first (at once), then every series is rendered.
    pub async fn render(&self) -> String {
        let samplers: Vec<Arc<Sampler>> = self
            .samplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        futures::future::join_all(samplers.iter().map(|s| s())).await;
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by operationId and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival until its response head, by operationId."
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being handled now.");
    describe_counter!(
        INGESTED_BYTES,
        Unit::Bytes,
        "Bytes of files recorded (new or deduplicated)."
    );
    describe_counter!(SERVED_BYTES, Unit::Bytes, "Bytes of file contents sent.");
    describe_counter!(
        INGESTS,
        "Files ingested or linked, by outcome (stored, deduplicated, refused, failed)."
    );
    describe_gauge!(EVENTS_HEAD, "The latest committed event sequence.");
    describe_gauge!(
        EVENTS_LISTENER_SEQUENCE,
        "The latest event sequence this process's listener was told of."
    );
    describe_counter!(EVENTS_COMMITTED, "Events this process committed, by type.");
    describe_gauge!(
        EVENTS_UNNUMBERED,
        "Committed events waiting for their sequence number (a numbering backlog)."
    );
    describe_counter!(
        SEQUENCER_PASSES,
        "Numbering passes of this process: numbered, idle (nothing waited) or failed."
    );
    describe_gauge!(
        EVENT_LISTENER_UP,
        "1 when the LISTEN connection of the event bus is up."
    );
    describe_gauge!(LONG_POLLS, "GET /events requests open now.");
    describe_gauge!(
        DB_POOL,
        "Database pool connections by state (in_use, idle, waiting callers)."
    );
    describe_gauge!(DB_POOL_MAX, "The database pool's size limit.");
    describe_counter!(
        BACKEND_OPERATIONS,
        "Storage backend operations, by backend, operation and outcome."
    );
    describe_histogram!(
        BACKEND_DURATION,
        Unit::Seconds,
        "Storage backend operation durations (a read until its stream starts)."
    );
    describe_gauge!(UPLOAD_SESSIONS, "Open upload sessions (every tenant).");
    describe_counter!(
        WORKER_JOBS,
        "Background job work items, by job and outcome."
    );
    describe_counter!(WORKER_PASSES, "Passes of the background jobs, by outcome.");
    describe_counter!(
        QUOTA_REFUSALS,
        "Writes refused by a tenant quota, by quota."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
}

#[cfg(test)]
mod tests {
    /// The Grafana dashboard in `deploy/` uses only series this process exports.
    #[test]
    fn the_dashboard_uses_only_exported_series() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/grafana/artifactstore.json")).unwrap();
        let mut used = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(at) = rest.find("artifactstore_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    let series = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| {
                            name.strip_suffix(suffix)
                                .filter(|base| super::SERIES.contains(base))
                        })
                        .unwrap_or(&name);
                    assert!(
                        super::SERIES.contains(&series),
                        "panel `{}` uses `{name}`, which is not exported",
                        panel["title"]
                    );
                    used += 1;
                }
            }
        }
        assert!(used > 20, "the dashboard uses the series ({used})");
    }
}

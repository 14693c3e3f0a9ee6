//! Logs and traces: the `tracing` subscriber every command runs under.
//!
//! Logs go to stderr, as text or one JSON object per line, filtered by `ARTIFACTSTORE_LOG`.
//! Traces are off unless `ARTIFACTSTORE_OTLP_ENDPOINT` names an OTLP/HTTP collector; then spans
//! (each request, named by its operationId and parented on the client's W3C `traceparent`; the
//! database work that records events; every storage backend operation) are exported to
//! `<endpoint>/v1/traces` as OTLP JSON, in batches, off the request path, and requests to S3
//! carry the trace context on.
//!
//! The spans that exist only for traces (target [`SPANS`]) never reach the log lines, so a
//! log line names its request once, however deep it was logged.

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The target of spans made for traces only (database and backend work).
pub const SPANS: &str = "artifactstore::spans";

/// Whether spans are exported (an OTLP endpoint is set).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported: fields only traces need are recorded only then, so that the
/// log lines do not carry them.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// How a server-side process (serve, worker, migrate, replay, verify, storage) writes its
/// logs and traces. Client commands log as text and export nothing.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format: `text` or `json` (one object per line).
    #[arg(long, env = "ARTIFACTSTORE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// An OTLP/HTTP collector's base URL (e.g. `http://collector:4318`): spans are sent to
    /// `<it>/v1/traces` as JSON. Off when unset.
    #[arg(long, env = "ARTIFACTSTORE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// What must be flushed when the process ends.
#[must_use = "call shutdown() at exit, so that the last spans are sent"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans not yet exported (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: sending the last trace spans failed: {e}");
        }
    }
}

/// Installs the subscriber: `filter` (EnvFilter syntax) and `format` (`text` or `json`) for the
/// logs, and an OTLP/HTTP exporter when `otlp_endpoint` is given. An error names the setting.
pub fn init(filter: &str, format: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    // Trace-only spans are off for the logs by a directive (the most specific target wins over
    // any the operator gives): a directive is decided once per callsite, so disabled spans and
    // events cost nothing on hot paths, where a filter function would be asked at every hit.
    let logged = EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid setting ARTIFACTSTORE_LOG (--log): {e}"))?
        .add_directive(format!("{SPANS}=off").parse().expect("a valid directive"));
    let endpoint = otlp_endpoint.filter(|e| !e.is_empty());
    let installed = match endpoint {
        // The filter for the whole subscriber: every callsite it disables is decided once and
        // costs nothing after (hyper's and tokio's trace events on hot paths included).
        None => tracing_subscriber::registry()
            .with(logged)
            .with(log_layer(format)?)
            .try_init()
            .map(|()| None),
        // Spans the logs leave out go to the traces: one filter per layer.
        Some(endpoint) => {
            let provider = tracer_provider(endpoint)?;
            let traces = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("artifactstore"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            tracing_subscriber::registry()
                .with(log_layer(format)?.with_filter(logged))
                .with(traces)
                .try_init()
                .map(|()| Some(provider))
        }
    };
    let provider = installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    Ok(Telemetry { provider })
}

/// The log lines on stderr: text, or one JSON object per line with the request's span (id,
/// operation, tenant) once, as `span`.
fn log_layer<S>(format: &str) -> Result<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        "text" => Ok(text.boxed()),
        "json" => Ok(text
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()),
        other => Err(format!(
            "invalid setting ARTIFACTSTORE_LOG_FORMAT (--log-format): `{other}` (expected text or json)"
        )),
    }
}

/// The OTLP/HTTP (JSON) exporter to `<endpoint>/v1/traces`, batching on a thread of its own.
fn tracer_provider(endpoint: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let invalid = |message: String| {
        format!("invalid setting ARTIFACTSTORE_OTLP_ENDPOINT (--otlp-endpoint): {message}")
    };
    let base: url::Url = endpoint
        .parse()
        .map_err(|e| invalid(format!("`{endpoint}` is not a URL: {e}")))?;
    if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
        return Err(invalid(format!(
            "`{endpoint}` is not an http(s) URL of a collector, e.g. http://collector:4318"
        )));
    }
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(traces)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("artifactstore")
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Parents `span` on the W3C trace context of `headers` (`traceparent`, `tracestate`), when
/// traces are exported; answers the trace id the client sent, if its `traceparent` is well
/// formed, for the logs.
pub fn continue_trace(span: &tracing::Span, headers: &poem::http::HeaderMap) -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let traceparent = headers.get("traceparent")?.to_str().ok()?;
    let trace_id = trace_id_of(traceparent)?;
    let context = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&HeaderExtractor(headers));
    let _ = span.set_parent(context);
    Some(trace_id.to_owned())
}

/// The trace id of a well-formed `traceparent` (version 00: `00-<32 hex>-<16 hex>-<2 hex>`, ids
/// not all zeros).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let well_formed = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    well_formed.then_some(trace_id)
}

/// Passes the W3C trace context of the current span (`traceparent`, `tracestate`) to `set`,
/// when spans are exported: outgoing requests (to S3) carry it, so the services they reach can
/// join the trace.
pub fn inject_current(set: impl FnMut(&str, String)) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !exporting() {
        return;
    }
    struct Injector<F>(F);
    impl<F: FnMut(&str, String)> opentelemetry::propagation::Injector for Injector<F> {
        fn set(&mut self, key: &str, value: String) {
            (self.0)(key, value)
        }
    }
    let context = tracing::Span::current().context();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&context, &mut Injector(set));
}

struct HeaderExtractor<'a>(&'a poem::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn only_well_formed_traceparents_are_taken() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")),
            Some(id)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }
}

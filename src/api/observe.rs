//! What every request leaves behind, whatever its outcome: an id (`X-Request-Id`, the client's
//! if it sent a sane one), a span carrying the id, the operation and the tenant (every log line
//! of the request carries them), one access log line with numeric `status` and `duration_ms`,
//! and the request metrics ([`HTTP_REQUESTS`], [`HTTP_REQUEST_DURATION`]).
//!
//! A client's W3C `traceparent` is taken: its trace id goes into the span (and so into every
//! log line), and the request's trace span, when traces are exported, is its child.
//!
//! A request whose client went away before its answer is logged and counted with status 499
//! (nginx's "client closed request"), so abandoned requests are visible too; one whose handler
//! panicked, with 500.

use super::routes::RouteTable;
use crate::metrics::{HTTP_IN_FLIGHT, HTTP_REQUEST_DURATION, HTTP_REQUESTS};
use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// `X-Request-Id`.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a client; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The request's id, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The client's id if it is sane (1 to 128 characters of letters, digits and `-_.:`), else a
/// new one (a UUIDv7: sortable by time).
fn request_id(req: &Request) -> Arc<str> {
    let sane = |id: &&str| {
        !id.is_empty()
            && id.len() <= MAX_REQUEST_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    match req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(sane)
    {
        Some(id) => Arc::from(id),
        None => Arc::from(uuid::Uuid::now_v7().to_string()),
    }
}

/// Records the tenant a request acts for on its span (called once it is authorized).
pub fn record_tenant(tenant: &str) {
    tracing::Span::current().record("tenant", tenant);
}

/// The outermost middleware: see the module documentation.
pub async fn observe<E: Endpoint>(
    endpoint: Arc<E>,
    mut req: Request,
    routes: Arc<RouteTable>,
) -> poem::Result<Response> {
    let started = Instant::now();
    let id = request_id(&req);
    let operation = routes
        .operation(req.method(), req.uri().path())
        .unwrap_or("unknown");
    // At ERROR level so that it is enabled whenever any line is logged: a warning about the
    // request carries the request's id and operation under every filter.
    let span = tracing::error_span!(
        "request",
        request_id = %id,
        operation,
        method = %req.method(),
        path = req.uri().path(),
        tenant = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let exporting = crate::telemetry::exporting();
    if exporting {
        span.record("otel.name", operation);
        span.record("otel.kind", "server");
    }
    if let Some(trace_id) = crate::telemetry::continue_trace(&span, req.headers()) {
        span.record("trace_id", trace_id);
    }
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut finished = Finished {
        operation,
        exporting,
        started,
        span: span.clone(),
        status: None,
    };
    metrics::gauge!(HTTP_IN_FLIGHT).increment(1.0);
    let mut resp = endpoint
        .call(req)
        .instrument(span)
        .await
        .map_or_else(|e| e.into_response(), IntoResponse::into_response);
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, value);
    }
    finished.status = Some(resp.status().as_u16());
    Ok(resp)
}

/// Logs and counts the request when it ends: answered (`status` set) or dropped.
struct Finished {
    operation: &'static str,
    exporting: bool,
    started: Instant,
    span: tracing::Span,
    status: Option<u16>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_IN_FLIGHT).decrement(1.0);
        let elapsed = self.started.elapsed();
        // Dropped unanswered: the client went away (499), or the handler panicked (500).
        let panicked = std::thread::panicking();
        let status = match self.status {
            Some(status) => status,
            None if panicked => 500,
            None => 499,
        };
        metrics::counter!(
            HTTP_REQUESTS,
            "operation" => self.operation,
            "status" => status_label(status)
        )
        .increment(1);
        metrics::histogram!(HTTP_REQUEST_DURATION, "operation" => self.operation)
            .record(elapsed.as_secs_f64());
        let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        if self.exporting {
            self.span.record("http.response.status_code", status);
        }
        let _entered = self.span.enter();
        if panicked {
            tracing::error!(status, duration_ms, "request failed: its handler panicked");
        } else if status >= 500 {
            tracing::warn!(status, duration_ms, "request answered");
        } else if self.status.is_none() {
            tracing::info!(status, duration_ms, "request abandoned by the client");
        } else {
            tracing::info!(status, duration_ms, "request answered");
        }
    }
}

/// The status as a label, without allocating for the usual ones.
fn status_label(status: u16) -> metrics::SharedString {
    const KNOWN: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (206, "206"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (406, "406"),
        (409, "409"),
        (410, "410"),
        (411, "411"),
        (412, "412"),
        (413, "413"),
        (415, "415"),
        (416, "416"),
        (422, "422"),
        (429, "429"),
        (499, "499"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (507, "507"),
    ];
    match KNOWN.iter().find(|(s, _)| *s == status) {
        Some((_, label)) => metrics::SharedString::const_str(label),
        None => metrics::SharedString::from(status.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_request_ids_are_taken() {
        let with = |value: &str| {
            let req = Request::builder().header(REQUEST_ID, value).finish();
            request_id(&req)
        };
        assert_eq!(&*with("abc-123_x.y:z"), "abc-123_x.y:z");
        for insane in ["", "a b", "<script>", "ü", &"x".repeat(129)] {
            let id = with(insane);
            assert_ne!(&*id, insane);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        let fresh = request_id(&Request::builder().finish());
        assert!(uuid::Uuid::parse_str(&fresh).is_ok());
    }
}

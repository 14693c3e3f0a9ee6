//! RFC 7807 problem details, and the mapping from library errors to HTTP.

use crate::error::Error;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::Object;

/// `application/problem+json`.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where problem types live: `<this><slug>`, the slug of the status's reason phrase
/// (`not-found`, `insufficient-storage`...) or of the problem (`quota-exceeded`).
pub const PROBLEM_TYPES: &str = "https://artifactstore.dev/problems/";

/// Most bytes of `detail`: a problem never echoes more of a client's input than this.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// Marks a response as a problem this server built. Only those are completed by [`finish`];
/// anything else, a stored file served as `application/problem+json` included, passes
/// byte for byte.
#[derive(Debug, Clone, Copy)]
struct BuiltHere;

/// An RFC 7807 problem.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The request path this occurrence concerns.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The request's id (also in the `X-Request-Id` response header and in every server log
    /// line about the request): quote it to the operator.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For upload offset mismatches: the bytes the session holds (resume from here).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// For quota refusals: which quota (`bytes`, `packages`, `upload_sessions`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// For quota refusals: the quota's limit.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// For quota refusals: what the tenant holds now (reservations included), without the
    /// refused write.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
}

impl Problem {
    /// A problem with a status and detail; type and title follow from the status.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL_BYTES {
            let mut end = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push_str("… (cut short)");
        }
        let title = status.canonical_reason().unwrap_or("Error").to_owned();
        let slug = title.to_lowercase().replace(' ', "-");
        Problem {
            problem_type: format!("{PROBLEM_TYPES}{slug}"),
            title,
            status: status.as_u16(),
            detail,
            instance: None,
            request_id: None,
            offset: None,
            quota: None,
            limit: None,
            used: None,
        }
    }

    /// Sets `instance`.
    pub fn at(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = Response::builder()
            .status(self.status_code())
            .content_type(PROBLEM_JSON)
            .body(body);
        resp.extensions_mut().insert(BuiltHere);
        resp
    }
}

/// A problem as an operation's response payload (`application/problem+json`), marked as
/// built here (see [`finish`]).
#[derive(Debug, Clone)]
pub struct ProblemBody(pub Problem);

impl poem_openapi::payload::Payload for ProblemBody {
    const CONTENT_TYPE: &'static str = PROBLEM_JSON;

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        <Problem as poem_openapi::types::Type>::schema_ref()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        <Problem as poem_openapi::types::Type>::register(registry);
    }
}

impl IntoResponse for ProblemBody {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// Maps a library error to a problem. Server faults are logged here, once, and clients get a
/// generic detail that leaks nothing.
pub fn from_error(error: &Error) -> Problem {
    let (status, detail) = match error {
        Error::NotFound { .. } => (StatusCode::NOT_FOUND, error.to_string()),
        Error::Conflict(_) => (StatusCode::CONFLICT, error.to_string()),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, error.to_string()),
        Error::InvalidInput(_) | Error::DigestMismatch { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
        Error::LimitExceeded(_) => (StatusCode::PAYLOAD_TOO_LARGE, error.to_string()),
        Error::OverQuota { .. } | Error::InsufficientStorage(_) => {
            (StatusCode::INSUFFICIENT_STORAGE, error.to_string())
        }
        Error::Gone(_) => (StatusCode::GONE, error.to_string()),
        Error::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, error.to_string()),
        Error::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, error.to_string()),
        Error::Body(_) => (StatusCode::BAD_REQUEST, error.to_string()),
        Error::OffsetMismatch { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, error.to_string()),
        Error::Storage {
            unavailable: true, ..
        } => {
            tracing::error!(error = %error, "storage unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the storage backend is unavailable; retry later".into(),
            )
        }
        Error::Database(_) => {
            tracing::error!(error = %error, "database failure");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; retry later".into(),
            )
        }
        Error::Storage { .. } | Error::Integrity(_) => {
            tracing::error!(error = %error, "internal failure");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the operator has the details in the server log".into(),
            )
        }
    };
    let mut problem = Problem::new(status, detail);
    match error {
        Error::OffsetMismatch { offset } => problem.offset = Some(*offset),
        Error::OverQuota { quota, limit, used } => {
            crate::metrics::quota_refusal(error);
            problem.problem_type = format!("{PROBLEM_TYPES}quota-exceeded");
            problem.title = "Quota exceeded".into();
            problem.quota = Some(quota.name().into());
            problem.limit = Some(*limit);
            problem.used = Some(*used);
        }
        _ => {}
    }
    problem
}

/// Turns any error poem produced (unknown route, wrong method, unparsable parameters or body)
/// into a problem response.
pub async fn from_poem_error(error: poem::Error) -> Response {
    // Problems our handlers built are already complete responses. (poem replaces a response's
    // extensions with the error's when it turns one into the other: mark it again. An error
    // response never carries a stored file's bytes, so a problem here is always ours.)
    if error.is_from_response() {
        let mut resp = error.into_response();
        let is_problem = resp
            .headers()
            .get(poem::http::header::CONTENT_TYPE)
            .is_some_and(|v| v == PROBLEM_JSON);
        if is_problem {
            resp.extensions_mut().insert(BuiltHere);
        }
        return resp;
    }
    let status = error.status();
    if status.is_server_error() {
        tracing::error!(error = %error, "request failed");
    }
    let detail = match status {
        StatusCode::NOT_FOUND if error.is::<poem::error::NotFoundError>() => {
            "no such route".to_owned()
        }
        StatusCode::METHOD_NOT_ALLOWED => "this route does not support that method".to_owned(),
        s if s.is_server_error() => "internal error".to_owned(),
        _ => public_detail(&error.to_string()),
    };
    Problem::new(status, detail).into_response()
}

/// poem-openapi names path parameters `param0`, `param1`... internally; say "path parameter"
/// instead of leaking those names.
fn public_detail(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut rest = detail;
    while let Some(i) = rest.find("path `param") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "path `param".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with('`') {
            out.push_str("path parameter");
            rest = &after[digits + 1..];
        } else {
            out.push_str("path `param");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Completes the problem responses this server built: sets `instance` (the request path)
/// where it is missing and `request_id`, and `Allow` on 405s. Every other response (file bytes of any media
/// type) passes untouched.
pub async fn finish<E: poem::Endpoint>(
    endpoint: std::sync::Arc<E>,
    req: poem::Request,
    routes: std::sync::Arc<super::routes::RouteTable>,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let request_id = req
        .extensions()
        .get::<super::observe::RequestId>()
        .map(|id| id.0.clone());
    let mut resp = endpoint.call(req).await?.into_response();
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = routes.allow(&path)
        && let Ok(value) = methods.parse()
    {
        resp.headers_mut().insert(poem::http::header::ALLOW, value);
    }
    if resp.extensions().get::<BuiltHere>().is_none() {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = body.into_bytes().await.unwrap_or_default();
    let body = match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
        Ok(mut map) => {
            map.entry("instance")
                .or_insert_with(|| serde_json::Value::String(path));
            if let Some(id) = request_id {
                map.insert(
                    "request_id".into(),
                    serde_json::Value::String(id.to_string()),
                );
            }
            serde_json::to_vec(&map).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    let mut resp = Response::from_parts(parts, poem::Body::from(body));
    resp.headers_mut()
        .remove(poem::http::header::CONTENT_LENGTH);
    let status = resp.status();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        // Every refusal that may pass says when to try again (problems built outside an
        // operation's declared responses included).
        resp.headers_mut()
            .entry(poem::http::header::RETRY_AFTER)
            .or_insert_with(|| retry_after(status).into());
    }
    Ok(resp)
}

/// Seconds a client is asked to wait before retrying a 503 or 429.
pub fn retry_after(status: StatusCode) -> u64 {
    if status == StatusCode::TOO_MANY_REQUESTS {
        1
    } else {
        5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_parameter_names_are_not_shown() {
        assert_eq!(
            public_detail("failed to parse path `param0`: invalid character"),
            "failed to parse path parameter: invalid character"
        );
        assert_eq!(public_detail("path `paramx` stays"), "path `paramx` stays");
    }

    #[test]
    fn details_never_echo_more_than_a_kibibyte() {
        let input = "é".repeat(5000);
        let p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("bad: {input}"));
        assert!(
            p.detail.len() <= MAX_DETAIL_BYTES + 20,
            "{}",
            p.detail.len()
        );
        assert!(p.detail.ends_with("(cut short)"));
        let short = Problem::new(StatusCode::BAD_REQUEST, "short");
        assert_eq!(short.detail, "short");
    }

    #[test]
    fn server_faults_do_not_leak() {
        let p = from_error(&Error::Database(
            "password authentication failed for user x".into(),
        ));
        assert_eq!(p.status, 503);
        assert!(!p.detail.contains("password"));
        let p = from_error(&Error::Integrity("/var/lib/secret path".into()));
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("/var/lib"));
    }
}

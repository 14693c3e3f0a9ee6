//! The HTTP API: poem-openapi handlers that parse, authorize, call one registry function, and
//! map the result. Every error is `application/problem+json`, unknown routes and methods
//! included.

// Handlers return `Result<_, ApiError>`, whose variants carry a whole problem document: large,
// but only on the error path, where a copy of ~150 bytes costs nothing that matters.
#![allow(clippy::result_large_err)]

mod audit;
mod blobs;
mod body;
pub mod cursor;
pub mod error;
mod events;
mod files;
mod form;
mod health;
mod log;
mod manifests;
pub mod metrics_listener;
pub mod observe;
mod operations;
mod package_files;
mod packages;
pub mod problem;
mod responses;
mod retention;
mod routes;
mod schemas;
mod security;
pub mod serve;
mod spec;
mod storage;
mod tenants;
mod text;
mod uploads;

pub use responses::{RangePlan, range_plan};
pub use uploads::parse_content_range;

use crate::auth::TokenStore;
use crate::registry::Registry;
use poem::{Endpoint, EndpointExt, Request, Route};
use poem_openapi::{OpenApiService, Tags};
use std::sync::Arc;

/// Shared state handed to every API.
#[derive(Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Registry,
    /// Who may do what.
    pub tokens: Arc<TokenStore>,
    /// Wake-ups for event long-polls.
    pub events: crate::events::EventBus,
    /// Reads of event pages, coalesced across waiters.
    pub tail: crate::events::TailReader,
    /// Largest JSON request body, in bytes.
    pub max_json_body: u64,
    /// Largest producer provenance at finalize, in bytes of canonical JSON.
    pub max_provenance: u64,
    /// How long a request body may send nothing.
    pub body_idle_timeout: std::time::Duration,
    /// Readiness checks (`/readyz`), shared with the metrics listener.
    pub readiness: Arc<crate::health::ReadinessProbe>,
    /// Where reads are recorded.
    pub retrievals: crate::registry::RetrievalLog,
    /// The key log checkpoints are signed with.
    pub signer: Arc<crate::signing::SigningKey>,
}

#[derive(Tags)]
enum ApiTags {
    /// Packages: create, upload, finalize, manifests.
    Packages,
    /// Files: metadata and downloads.
    Files,
    /// Content-addressed blobs: dedup queries.
    Blobs,
    /// Resumable upload sessions.
    Uploads,
    /// The event stream (long-poll).
    Events,
    /// Retention classes, legal holds, class changes.
    Retention,
    /// Stored copies and their verification.
    Storage,
    /// Tenants' quotas.
    Tenants,
    /// Service status.
    System,
    /// Records of who read what.
    Audit,
}

type Apis = (
    health::HealthApi,
    packages::PackagesApi,
    package_files::PackageFilesApi,
    manifests::ManifestsApi,
    files::FilesApi,
    blobs::BlobsApi,
    uploads::UploadsApi,
    events::EventsApi,
    storage::StorageApi,
    retention::RetentionApi,
    tenants::TenantsApi,
    audit::AuditApi,
    log::LogApi,
);

fn service() -> OpenApiService<Apis, ()> {
    let apis = (
        health::HealthApi,
        packages::PackagesApi,
        package_files::PackageFilesApi,
        manifests::ManifestsApi,
        files::FilesApi,
        blobs::BlobsApi,
        uploads::UploadsApi,
        events::EventsApi,
        storage::StorageApi,
        retention::RetentionApi,
        tenants::TenantsApi,
        audit::AuditApi,
        log::LogApi,
    );
    OpenApiService::new(apis, "artifact-store", env!("CARGO_PKG_VERSION")).description(
        "System of record for generated outputs: content-addressed, immutable packages with \
         canonical manifests and an append-only event log. Errors are RFC 7807 \
         `application/problem+json`. Authenticate with `Authorization: Bearer <token>`.",
    )
}

/// The OpenAPI document, as pretty JSON (what `openapi/artifactstore.json` holds). The
/// operations take the application's state from the request, so describing them needs none.
pub fn spec_json() -> String {
    spec::complete(&service().spec())
}

/// `PUT /packages/{id}/files/a/b/c`: the route takes one segment, so the slashes of a
/// multi-segment relative path are percent-encoded before routing. `..` and other bad
/// segments are then rejected by `RelativePath`, never normalised. A raw upload without a
/// Content-Type (plain `curl -T`) is `application/octet-stream`, the default media type.
async fn encode_file_path(mut req: Request) -> poem::Result<Request> {
    let path = req.uri().path();
    let segments: Vec<&str> = path.splitn(5, '/').collect();
    let is_file_put = req.method() == poem::http::Method::PUT
        && segments.len() == 5
        && segments[1] == "packages"
        && segments[3] == "files";
    let is_chunk = req.method() == poem::http::Method::PATCH && path.starts_with("/uploads/");
    if (is_file_put || is_chunk) && !req.headers().contains_key(poem::http::header::CONTENT_TYPE) {
        req.headers_mut().insert(
            poem::http::header::CONTENT_TYPE,
            poem::http::HeaderValue::from_static(crate::registry::DEFAULT_MEDIA_TYPE),
        );
    }
    let segments: Vec<&str> = req.uri().path().splitn(5, '/').collect();
    if segments.len() == 5
        && segments[1] == "packages"
        && segments[3] == "files"
        && segments[4].contains('/')
    {
        let rewritten = format!(
            "/packages/{}/files/{}",
            segments[2],
            segments[4].replace('/', "%2F")
        );
        let full = match req.uri().query() {
            Some(q) => format!("{rewritten}?{q}"),
            None => rewritten,
        };
        if let Ok(uri) = full.parse() {
            *req.uri_mut() = uri;
        }
    }
    Ok(req)
}

/// Bodies other than file bytes (JSON, and the empty bodies of most requests) are read whole
/// by their extractors, so they are bounded here: a declared length over `limit` is refused at
/// once with 413 (after a bounded drain, so the client reads the answer); a body without a
/// declared length is read here and refused the same way once it passes `limit`. Raw file PUTs, upload chunks and multipart file uploads
/// stream, bounded by the file size limit, and are left alone.
async fn limit_body(mut req: Request, limit: u64) -> poem::Result<Request> {
    use poem::http::Method;
    let path = req.uri().path();
    let streams_file =
        (req.method() == Method::PUT && path.starts_with("/packages/") && path.contains("/files/"))
            || (req.method() == Method::PATCH && path.starts_with("/uploads/"))
            || (req.method() == Method::POST
                && path.starts_with("/packages/")
                && path.ends_with("/files"));
    if streams_file || matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(req);
    }
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => {
            // Drained (bounded) first, so the client reads the refusal rather than a reset.
            body::drain(&mut body::stream(req.take_body())).await;
            Err(poem::Error::from_string(
                format!("the request body is {n} bytes; at most {limit} are accepted here"),
                poem::http::StatusCode::PAYLOAD_TOO_LARGE,
            ))
        }
        Some(_) => Ok(req),
        None => {
            // No declared length: read up to the limit here (the extractor would buffer it
            // anyway), refusing as above once it passes.
            let mut stream = body::stream(req.take_body());
            let mut read = Vec::new();
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                let chunk = chunk.map_err(|e| {
                    poem::Error::from_string(
                        format!("request body: {e}"),
                        poem::http::StatusCode::BAD_REQUEST,
                    )
                })?;
                if (read.len() + chunk.len()) as u64 > limit {
                    body::drain(&mut stream).await;
                    return Err(poem::Error::from_string(
                        format!("the request body is over the {limit} bytes accepted here"),
                        poem::http::StatusCode::PAYLOAD_TOO_LARGE,
                    ));
                }
                read.extend_from_slice(&chunk);
            }
            req.set_body(read);
            Ok(req)
        }
    }
}

/// No request body is read before its token is checked: a request that may carry one (any
/// method but GET, HEAD and OPTIONS) with a missing or unknown token is refused here, before
/// any extractor or handler reads its body (a bounded drain then lets the client read the
/// answer). The scope an operation needs is checked by its handler, which reads no body
/// before that either (file uploads) or only a bounded JSON one.
async fn authenticate_first(mut req: Request, tokens: Arc<TokenStore>) -> poem::Result<Request> {
    use poem::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(req);
    }
    let bearer = req
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim().to_owned())
        });
    match tokens.authenticate(bearer.as_deref()) {
        Ok(_) => Ok(req),
        Err(refused) => {
            body::drain(&mut body::stream(req.take_body())).await;
            Err(poem::Error::from_response(
                poem::IntoResponse::into_response(error::ApiError::from(refused)),
            ))
        }
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> impl Endpoint {
    let json_limit = state.max_json_body;
    let idle = state.body_idle_timeout;
    let tokens = state.tokens.clone();
    let api = service();
    let document = spec::complete(&api.spec());
    let routes = std::sync::Arc::new(routes::RouteTable::from_spec(&document));
    let allow = routes.clone();
    let spec = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json")
            .body(document.clone())
    });
    let ui = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", ui)
        // One allocation for the whole server: poem clones the data into every request.
        .data(Arc::new(state))
        .before(encode_file_path)
        .before(move |req| limit_body(req, json_limit))
        .before(move |req| authenticate_first(req, tokens.clone()))
        .catch_all_error(problem::from_poem_error)
        .around(move |endpoint, req| problem::finish(endpoint, req, allow.clone()))
        // Outside the others: it sees every answer as sent, problems included.
        .around(move |endpoint, req| serve::bodies(endpoint, req, idle))
        // Outermost: every request gets its id, span, log line and metrics.
        .around(move |endpoint, req| observe::observe(endpoint, req, routes.clone()))
}

//! The HTTP API: poem-openapi handlers that parse, call one registry function, and map the
//! result. Every error is `application/problem+json`, unknown routes and methods included.

mod health;
pub mod problem;

use crate::registry::Registry;
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

/// Shared state handed to every API.
#[derive(Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Registry,
}

fn service(state: &AppState) -> OpenApiService<health::HealthApi, ()> {
    OpenApiService::new(
        health::HealthApi {
            state: state.clone(),
        },
        "artifact-store",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "System of record for generated outputs: content-addressed, immutable packages with \
         canonical manifests and an append-only event log.",
    )
}

/// The OpenAPI document, as pretty JSON (what `openapi/artifactstore.json` holds). Needs no
/// database: the placeholder pool below never connects.
pub fn spec_json() -> String {
    let pool = crate::db::pool("postgres://spec@127.0.0.1:1/spec", 1).expect("static URL is valid");
    let root = std::env::temp_dir().join("artifactstore-spec");
    let store =
        crate::storage::local::LocalStore::open("local", root).expect("temp dir is writable");
    let backends = crate::storage::Backends::single(std::sync::Arc::new(store));
    service(&AppState {
        registry: Registry::new(pool, backends),
    })
    .spec()
}

/// The whole HTTP application.
pub fn app(state: AppState) -> impl Endpoint {
    let api = service(&state);
    let spec = api.spec_endpoint();
    let ui = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", ui)
        .catch_all_error(problem::from_poem_error)
        .with(poem::middleware::Tracing)
}

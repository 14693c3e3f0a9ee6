//! `GET /events`: the tenant's events after a sequence, long-polling until one commits.

use super::AppState;
use super::error::{Answer, ApiError};
use super::operations;
use super::problem::{ProblemBody, from_error};
use super::security::Auth;
use crate::auth::Scope;
use crate::events::{StoredEvent, TailPage, wire};
use poem::http::header;
use poem::web::Data;
use poem::{Request, Response};
use poem_openapi::param::Query;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::registry::{MetaResponses, Registry};
use poem_openapi::{ApiResponse, Object, OpenApi, ResponseContent};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub struct EventsApi;

/// One event (JSON form).
#[derive(Debug, Object)]
pub struct EventJson {
    /// Gapless place in the log, given as events commit: a reader from 1 sees every event once, in order.
    pub sequence: i64,
    /// Unique id.
    pub id: Uuid,
    /// e.g. `v1.package.created`.
    #[oai(rename = "type")]
    pub event_type: String,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub occurred_at: String,
    /// Owning tenant.
    pub tenant: String,
    /// What the event is about (a package id for package and file events).
    pub subject_id: Uuid,
    /// The event's payload (the JCS projection of its canonical CBOR).
    pub payload: serde_json::Value,
    /// The log's hash chain through this event (64 lowercase hex): BLAKE3 over the previous
    /// event's chain (32 zero bytes before the first), `sequence` as 8 bytes big-endian, and
    /// the BLAKE3 digest of this event's canonical CBOR map without `sequence` and `chain` (as
    /// the CBOR page carries it). Checked by `artifactstore log verify`; signed in checkpoints
    /// (`GET /log/checkpoint`). Absent while the event is not chained yet.
    #[oai(skip_serializing_if_is_none)]
    pub chain: Option<String>,
}

/// A page of events.
#[derive(Debug, Object)]
pub struct EventPage {
    /// Events after `since`, in order.
    pub events: Vec<EventJson>,
    /// Pass as `since` next time (also advances past events your filters left out).
    pub next_since: i64,
}

#[derive(ResponseContent)]
#[allow(dead_code)]
enum EventPageContent {
    /// Canonical CBOR (the default): payloads embedded as their stored CBOR items.
    #[oai(content_type = "application/cbor")]
    Cbor(Binary<Vec<u8>>),
    /// JSON (`Accept: application/json`).
    #[oai(content_type = "application/json")]
    Json(Json<EventPage>),
}

#[derive(ApiResponse)]
#[allow(dead_code, clippy::large_enum_variant)] // documentation only; never constructed
enum EventsDoc {
    /// The page (possibly empty when the wait ended).
    #[oai(status = 200)]
    Ok(EventPageContent, #[oai(header = "Next-Since")] i64),
    /// The server, or the caller's tenant, has as many event requests open as it may; retry
    /// after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(ProblemBody, #[oai(header = "Retry-After")] u64),
}

/// A page of events, CBOR or JSON.
pub struct EventsBody(Response);

impl poem::IntoResponse for EventsBody {
    fn into_response(self) -> Response {
        self.0
    }
}

impl ApiResponse for EventsBody {
    fn meta() -> MetaResponses {
        EventsDoc::meta()
    }
    fn register(registry: &mut Registry) {
        EventsDoc::register(registry)
    }
}

fn wants_json(req: &Request) -> bool {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("application/cbor")
}

#[OpenApi(tag = "super::ApiTags::Events")]
impl EventsApi {
    /// Read events (long-poll)
    ///
    /// The caller's tenant's events with sequence > `since`, in order, at most `limit`. When
    /// there are none yet, waits up to `wait` seconds and answers as soon as one commits; at
    /// the end of the wait answers an empty page. `next_since` (also in the `Next-Since`
    /// header) is where to continue. Canonical CBOR by default; `Accept: application/json`
    /// for JSON.
    #[oai(path = "/events", method = "get", operation_id = "listEvents")]
    #[allow(clippy::too_many_arguments)] // each query parameter is one, as the spec shows them
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        /// Return events after this sequence (default 0: from the start; -1: from the head
        /// of the log, only events committed from now on, as `tail -f` does).
        #[oai(validator(minimum(value = "-1"), maximum(value = "9007199254740991")))]
        since: Query<Option<i64>>,
        /// At most this many events (1-1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Seconds to wait when there is nothing yet (0-60, default 30).
        #[oai(validator(minimum(value = "0"), maximum(value = "60")))]
        wait: Query<Option<u32>>,
        /// Only event types starting with this prefix, e.g. `v1.package.`.
        #[oai(name = "type")]
        type_prefix: Query<Option<String>>,
    ) -> Answer<EventsBody, operations::ListEvents> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let prefix = type_prefix.0.filter(|p| !p.is_empty());
        if prefix.as_deref().is_some_and(|p| p.contains('\0')) {
            return Err(crate::Error::InvalidInput("`type` must not contain NUL".into()).into());
        }
        // A place among the waiters (bounded in all and per tenant), counted in `/health`
        // until this request ends, however it ends.
        let waiting = match state.events.waiting_request(&principal.tenant) {
            Ok(waiting) => std::sync::Arc::new(waiting),
            Err(refused) => {
                let problem = from_error(&crate::Error::from(refused));
                return Ok(EventsBody(poem::IntoResponse::into_response(problem)));
            }
        };
        let since = match since.0 {
            Some(-1) => {
                let client = state
                    .registry
                    .pool()
                    .get()
                    .await
                    .map_err(crate::Error::from)?;
                crate::events::latest_sequence(&**client).await?
            }
            since => since.unwrap_or(0),
        };
        let limit = i64::from(limit.0.unwrap_or(100));
        let wait = Duration::from_secs(u64::from(wait.0.unwrap_or(30)));
        let tenant = &principal.tenant;
        let (page, next_since) = read_or_wait(
            &state,
            tenant,
            since,
            limit,
            prefix.as_deref(),
            waiting,
            wait,
        )
        .await?;
        let page = page.as_ref().map_or(&[][..], |p| &p.events[..]);
        Ok(EventsBody(render(page, next_since, wants_json(req))?))
    }
}

/// Reads the events after `since`; when there are none, waits until one of the tenant's
/// commits (or `wait` ends) and reads again. Answers the page read last (`None` when the wait
/// ended with nothing) and where the next request continues.
async fn read_or_wait(
    state: &AppState,
    tenant: &crate::domain::TenantId,
    since: i64,
    limit: i64,
    prefix: Option<&str>,
    waiting: Arc<crate::events::WaitingRequest>,
    wait: Duration,
) -> Result<(Option<Arc<TailPage>>, i64), ApiError> {
    let deadline = Instant::now() + wait;
    // Every event committed before this request began is numbered before the first read, and
    // that read starts after the numbering (a client that wrote, then reads, sees its events;
    // so does any other client). Waiting for it is bounded by the request's own wait (at
    // least a second, at most ten): a numbering that is behind is a 503, never a stale page.
    let bound = wait.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let Some(mut fresh_after) = state.registry.sequencer().numbered_within(bound).await else {
        return Err(crate::Error::Database(
            "the event log's numbering is behind; retry in a moment".into(),
        )
        .into());
    };
    // Where the next read starts: a read that found nothing has looked up to its
    // `scanned_to`, so the next one need not look there again.
    let mut from = since;
    loop {
        let read = state
            .tail
            .page(tenant, from, limit, prefix, fresh_after, waiting.clone())
            .await?;
        // Later reads follow notifications of numbered events: any read will do.
        fresh_after = 0;
        let scanned_to = read.scanned_to;
        let next = if read.events.len() as i64 == limit {
            read.events.last().map_or(from, |e| e.sequence)
        } else {
            scanned_to
        };
        let now = Instant::now();
        if !read.events.is_empty() || now >= deadline {
            return Ok((Some(read), next));
        }
        from = scanned_to;
        // Woken only by commits of this tenant's events (or a reconnect of the listener).
        if !waiting.wait_beyond(scanned_to, deadline - now).await {
            // Timed out or shutting down: one last look, then answer.
            if Instant::now() >= deadline || state.events.is_closed() {
                return Ok((None, next));
            }
        }
    }
}

/// The page as canonical CBOR (the default) or JSON, with its `Next-Since` header.
fn render(page: &[StoredEvent], next_since: i64, json: bool) -> Result<Response, ApiError> {
    let mut body = if json {
        let json = wire::page_json(page, next_since).map_err(ApiError::from)?;
        Response::builder()
            .content_type("application/json")
            .body(serde_json::to_vec(&json).unwrap_or_default())
    } else {
        Response::builder()
            .content_type("application/cbor")
            .body(wire::page_cbor(page, next_since))
    };
    body.headers_mut().insert("Next-Since", next_since.into());
    Ok(body)
}

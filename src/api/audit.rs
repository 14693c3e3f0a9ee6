//! `/audit/retrievals`: a tenant's retrieval records, and how handlers make them.

use super::AppState;
use super::error::Answer;
use super::observe::RequestId;
use super::operations;
use super::security::Auth;
use crate::auth::{Principal, Scope};
use crate::domain::{FileId, PackageId, Timestamp};
use crate::registry::{Retrieval, RetrievalFilter, RetrievalKind};
use poem::Request;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// A record of `principal` reading `what` in `req`, its size and outcome to be filled in.
pub fn retrieval(
    principal: &Principal,
    req: &Request,
    what: RetrievalKind,
    package_id: Option<PackageId>,
    file_id: Option<FileId>,
) -> Retrieval {
    Retrieval {
        tenant: principal.tenant.clone(),
        token_name: principal.name.clone(),
        what,
        package_id,
        file_id,
        range: None,
        bytes_served: 0,
        status: 200,
        outcome: "complete",
        at: Timestamp::from_datetime(OffsetDateTime::now_utc()),
        client_addr: req
            .remote_addr()
            .as_socket_addr()
            .map(|a| a.ip().to_string()),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.to_string()),
    }
}

/// One read, as recorded.
#[derive(Debug, Clone, Object)]
pub struct RetrievalRecord {
    /// The name of the token that read.
    pub token_name: String,
    /// `package` (its record), `manifest` or `file` (its bytes).
    pub what: String,
    /// The package.
    #[oai(skip_serializing_if_is_none)]
    pub package_id: Option<Uuid>,
    /// The file, for file reads.
    #[oai(skip_serializing_if_is_none)]
    pub file_id: Option<Uuid>,
    /// First byte of the range asked for, if not the whole file.
    #[oai(skip_serializing_if_is_none)]
    pub range_start: Option<u64>,
    /// Last byte (inclusive) of that range.
    #[oai(skip_serializing_if_is_none)]
    pub range_end: Option<u64>,
    /// Bytes sent.
    pub bytes_served: u64,
    /// The HTTP status answered.
    pub status: u16,
    /// `complete`, `aborted` (the client went away, or the read failed, before the end),
    /// `not_modified`, `unsatisfiable` or `head`.
    pub outcome: String,
    /// When the read started.
    pub at: OffsetDateTime,
    /// The client's address.
    #[oai(skip_serializing_if_is_none)]
    pub client_addr: Option<String>,
    /// The request's id (`X-Request-Id`).
    #[oai(skip_serializing_if_is_none)]
    pub request_id: Option<String>,
}

/// A page of retrieval records, oldest first.
#[derive(Debug, Clone, Object)]
pub struct RetrievalPage {
    /// The records.
    pub items: Vec<RetrievalRecord>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

pub struct AuditApi;

#[OpenApi(tag = "super::ApiTags::Audit")]
impl AuditApi {
    /// List retrieval records
    ///
    /// Admin scope: the tenant's own records of reads by its tokens (downloads, manifest
    /// reads, package reads), oldest first. Written in batches within a second of the read;
    /// kept `ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS` days.
    #[oai(
        path = "/audit/retrievals",
        method = "get",
        operation_id = "listRetrievals"
    )]
    #[allow(clippy::too_many_arguments)] // each query parameter is one, as the spec shows them
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        /// Only reads of this package.
        package_id: Query<Option<Uuid>>,
        /// Only reads of this file.
        file_id: Query<Option<Uuid>>,
        /// Only reads at or after this time (RFC 3339).
        since: Query<Option<OffsetDateTime>>,
        /// Page size, 1-1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Opaque cursor from a previous page.
        cursor: Query<Option<String>>,
    ) -> Answer<Json<RetrievalPage>, operations::ListRetrievals> {
        let principal = state.authorize(&auth, Scope::Admin)?;
        let limit = i64::from(limit.0.unwrap_or(100));
        let after = cursor
            .0
            .filter(|c| !c.is_empty())
            .as_deref()
            .map(super::cursor::decode_retrieval_cursor)
            .transpose()?;
        let filter = RetrievalFilter {
            package_id: package_id.0.map(PackageId),
            file_id: file_id.0.map(FileId),
            since: since.0.map(Timestamp::from_datetime),
            limit,
            after,
        };
        let records = state
            .registry
            .retrievals(&principal.tenant, &filter)
            .await?;
        let next_cursor = (records.len() as i64 == limit)
            .then(|| {
                records
                    .last()
                    .map(|r| super::cursor::encode_retrieval_cursor(r.id))
            })
            .flatten();
        let items = records
            .into_iter()
            .map(|s| {
                let r = s.retrieval;
                RetrievalRecord {
                    token_name: r.token_name,
                    what: r.what.as_str().to_owned(),
                    package_id: r.package_id.map(|p| p.0),
                    file_id: r.file_id.map(|f| f.0),
                    range_start: r.range.map(|(s, _)| s),
                    range_end: r.range.map(|(_, e)| e),
                    bytes_served: r.bytes_served,
                    status: r.status,
                    outcome: r.outcome.to_owned(),
                    at: r.at.as_datetime(),
                    client_addr: r.client_addr,
                    request_id: r.request_id,
                }
            })
            .collect();
        Ok(Json(RetrievalPage { items, next_cursor }))
    }
}

//! `/files`: metadata and downloads.

use super::AppState;
use super::error::Answer;
use super::operations;
use super::responses::{
    Download, RangePlan, bytes_response, not_modified_response, plan, unsatisfiable,
};
use super::schemas::FileInfo;
use super::security::Auth;
use crate::auth::{Principal, Scope};
use crate::domain::FileId;
use crate::registry::FileRecord;
use crate::registry::RetrievalKind;
use crate::storage::ByteRange;
use poem::web::Data;
use poem::{Body, Request};
use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use std::sync::Arc;
use uuid::Uuid;

pub struct FilesApi;

#[OpenApi(tag = "super::ApiTags::Files")]
impl FilesApi {
    /// Get a file's metadata
    #[oai(path = "/files/:id", method = "get", operation_id = "getFile")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
    ) -> Answer<Json<FileInfo>, operations::GetFile> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let file = state
            .registry
            .get_file(&principal.tenant, FileId(id.0))
            .await?;
        Ok(Json(file.into()))
    }

    /// Download a file
    ///
    /// Streams the bytes. One `Range: bytes=a-b`, `a-` or `-n` answers 206; several ranges
    /// or a malformed header answer 200 with the whole file; an unsatisfiable range answers 416
    /// with `Content-Range: bytes */<size>`. `ETag` is `"<content_address>"`; a matching
    /// `If-None-Match` answers 304. `Repr-Digest` carries the SHA-256 (RFC 9530).
    #[oai(
        path = "/files/:id/download",
        method = "get",
        operation_id = "downloadFile"
    )]
    async fn download(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
    ) -> Answer<Download, operations::DownloadFile> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let file = state
            .registry
            .get_file(&principal.tenant, FileId(id.0))
            .await?;
        Ok(serve(&state, &principal, req, file, false).await?)
    }
}

/// Answers a download of `file` as its `Range` and `If-None-Match` ask: the bytes streamed
/// from storage, or (`head`) the same answer's headers alone, storage untouched.
pub(super) async fn serve(
    state: &AppState,
    principal: &Principal,
    req: &Request,
    file: FileRecord,
    head: bool,
) -> Result<Download, crate::Error> {
    let mut record = super::audit::retrieval(
        principal,
        req,
        RetrievalKind::File,
        Some(file.package_id),
        Some(file.id),
    );
    let range = match plan(req, &file) {
        RangePlan::NotModified => {
            record.status = 304;
            record.outcome = "not_modified";
            state.retrievals.record(record).await?;
            return Ok(not_modified_response(&file));
        }
        RangePlan::Unsatisfiable => {
            record.status = 416;
            record.outcome = "unsatisfiable";
            state.retrievals.record(record).await?;
            return Ok(unsatisfiable(&file, req.uri().path()));
        }
        RangePlan::Full => None,
        RangePlan::Partial(start, end) => Some((start, end)),
    };
    record.range = range;
    record.status = if range.is_some() { 206 } else { 200 };
    if head {
        record.outcome = "head";
        state.retrievals.record(record).await?;
        return Ok(bytes_response(&file, range, Body::empty()));
    }
    let byte_range = range.map(|(start, end)| ByteRange {
        offset: start,
        length: end - start + 1,
    });
    let expected = range.map_or(file.size, |(start, end)| end - start + 1);
    // The record's place is taken before a byte is read (so the queue bounds the downloads
    // in flight, not the records behind them), and filled once the bytes have gone (or the
    // client has): how many, and whether all. A whole file's last chunk is sent only once its
    // digest checked out; the server may stop reading the body once Content-Length bytes went,
    // before its end.
    let slot = state.retrievals.reserve(&principal.tenant).await?;
    let download = state.registry.read_record(file, byte_range).await?;
    let body = crate::metrics::count_served_then(download.body, move |sent, _| {
        record.bytes_served = sent;
        record.outcome = if sent == expected {
            "complete"
        } else {
            "aborted"
        };
        if let Some(slot) = slot {
            slot.record(record);
        }
    });
    Ok(bytes_response(
        &download.file,
        range,
        Body::from_bytes_stream(body),
    ))
}

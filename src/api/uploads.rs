//! `/uploads`: resumable upload sessions for large files and bad networks.

use super::AppState;
use super::error::{Answer, ApiError, ApiResult};
use super::operations;
use super::schemas::FileInfo;
use super::security::Auth;
use super::text::{Opt, Text};
use crate::auth::Scope;
use crate::domain::{PackageId, RelativePath};
use crate::registry::{Chunk, NewUpload, UploadSession};
use poem::Body;
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

pub struct UploadsApi;

/// `POST /uploads` body.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateUpload {
    /// Target package (must be open).
    pub package_id: Uuid,
    /// Path inside the package.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub relative_path: Text,
    /// Media type; `application/octet-stream` when absent.
    #[oai(skip_serializing_if_is_none)]
    pub media_type: Opt<Text>,
    /// Total size in bytes, if known.
    #[oai(skip_serializing_if_is_none)]
    #[oai(validator(minimum(value = "0"), maximum(value = "9007199254740991")))]
    pub size: Opt<u64>,
    /// `blake3:<hex>` or `sha256:<hex>` the complete bytes must have.
    #[oai(
        skip_serializing_if_is_none,
        validator(pattern = r"^(blake3|sha256):[0-9a-f]{64}$")
    )]
    pub expected_digest: Opt<Text>,
    /// Replace an existing file at the same path.
    #[oai(skip_serializing_if_is_none)]
    pub replace: Opt<bool>,
}

/// An upload session.
#[derive(Debug, Object)]
pub struct Upload {
    /// Id.
    pub id: Uuid,
    /// Where to `PATCH` chunks (relative to the server).
    pub upload_url: String,
    /// Bytes received: the next chunk starts here.
    pub offset: u64,
    /// Declared total size, if known.
    #[oai(skip_serializing_if_is_none)]
    pub size: Option<u64>,
    /// Target package.
    pub package_id: Uuid,
    /// Path inside the package.
    pub relative_path: String,
    /// When the session is abandoned if not completed.
    pub expires_at: OffsetDateTime,
}

impl From<UploadSession> for Upload {
    fn from(s: UploadSession) -> Self {
        Upload {
            upload_url: format!("/uploads/{}", s.id),
            id: s.id,
            offset: s.offset,
            size: s.size,
            package_id: s.package_id.0,
            relative_path: s.relative_path.to_string(),
            expires_at: s.expires_at.as_datetime(),
        }
    }
}

/// The offset after a chunk.
#[derive(Debug, Object)]
pub struct UploadOffset {
    /// Bytes received: the next chunk starts here.
    pub offset: u64,
}

#[derive(ApiResponse)]
enum CreatedUpload {
    /// The new session.
    #[oai(status = 201)]
    Created(Json<Upload>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
enum Accepted {
    /// The chunk was stored.
    #[oai(status = 202)]
    Accepted(Json<UploadOffset>, #[oai(header = "Upload-Offset")] u64),
}

#[derive(ApiResponse)]
enum CompletedUpload {
    /// The file.
    #[oai(status = 201)]
    Created(Json<FileInfo>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
enum Cancelled {
    /// The session and its bytes are gone.
    #[oai(status = 204)]
    NoContent,
}

/// Parses `Content-Range: bytes <start>-<end>/<total|*>`.
pub fn parse_content_range(value: &str) -> Result<Chunk, String> {
    let rest = value.trim().strip_prefix("bytes ").ok_or(
        "Content-Range must look like `bytes <start>-<end>/<total>` or `bytes <start>-<end>/*`",
    )?;
    let (span, total) = rest
        .split_once('/')
        .ok_or("Content-Range lacks `/<total>` (use `/*` if unknown)")?;
    let (start, end) = span
        .split_once('-')
        .ok_or("Content-Range lacks `<start>-<end>`")?;
    let number = |s: &str, what: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Content-Range {what} `{s}` is not a number"));
        }
        s.parse::<u64>()
            .map_err(|_| format!("Content-Range {what} `{s}` is too large"))
    };
    let start = number(start, "start")?;
    let end = number(end, "end")?;
    if end < start {
        return Err("Content-Range end is before its start".into());
    }
    let total = match total {
        "*" => None,
        t => Some(number(t, "total")?),
    };
    if total.is_some_and(|t| end >= t) {
        return Err("Content-Range end is past the total".into());
    }
    Ok(Chunk {
        start,
        end: Some(end),
        total,
    })
}

fn address(text: Option<Text>) -> ApiResult<Option<crate::identity::ContentAddress>> {
    text.map(|t| {
        t.0.parse().map_err(|e| {
            ApiError::from(crate::Error::InvalidInput(format!(
                "`expected_digest`: {e}"
            )))
        })
    })
    .transpose()
}

#[OpenApi(tag = "super::ApiTags::Uploads")]
impl UploadsApi {
    /// Start an upload session
    ///
    /// Then `PATCH` chunks to `upload_url` and `POST {upload_url}/complete`.
    #[oai(path = "/uploads", method = "post", operation_id = "createUpload")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        body: Json<CreateUpload>,
    ) -> Answer<CreatedUpload, operations::CreateUpload> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let body = body.0;
        let session = state
            .registry
            .create_upload(
                &principal.tenant,
                NewUpload {
                    package_id: PackageId(body.package_id),
                    relative_path: RelativePath::new(&body.relative_path.0)?,
                    media_type: body.media_type.0.map(String::from),
                    size: body.size.0,
                    expected_digest: address(body.expected_digest.0)?,
                    replace: body.replace.0.unwrap_or(false),
                },
            )
            .await?;
        let view: Upload = session.into();
        let location = view.upload_url.clone();
        Ok(CreatedUpload::Created(Json(view), location))
    }

    /// Get an upload session (to resume)
    #[oai(path = "/uploads/:id", method = "get", operation_id = "getUpload")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
    ) -> Answer<Json<Upload>, operations::GetUpload> {
        let principal = state.authorize(&auth, Scope::Write)?;
        Ok(Json(
            state
                .registry
                .get_upload(&principal.tenant, id.0)
                .await?
                .into(),
        ))
    }

    /// Append a chunk
    ///
    /// `Content-Range: bytes <start>-<end>/<total>` (or `/*` while the total is unknown).
    /// `start` must equal the session's offset, else 416 with the offset in the problem and in
    /// `Upload-Offset`. If the connection breaks, the bytes that arrived are kept: ask
    /// `GET /uploads/{id}` for the offset and continue from there.
    #[oai(path = "/uploads/:id", method = "patch", operation_id = "appendUpload")]
    async fn append(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
        /// `bytes <start>-<end>/<total>` or `bytes <start>-<end>/*`.
        #[oai(
            name = "Content-Range",
            validator(pattern = r"^bytes [0-9]{1,19}-[0-9]{1,19}/([0-9]{1,19}|\*)$")
        )]
        content_range: Header<String>,
        body: Binary<Body>,
    ) -> Answer<Accepted, operations::AppendUpload> {
        let mut stream = super::body::stream(body.0);
        let result = async {
            let principal = state.authorize(&auth, Scope::Write)?;
            let chunk = parse_content_range(&content_range.0)
                .map_err(|e| ApiError::from(crate::Error::InvalidInput(e)))?;
            let session = state
                .registry
                .append_upload(&principal.tenant, id.0, chunk, &mut stream)
                .await?;
            Ok(Accepted::Accepted(
                Json(UploadOffset {
                    offset: session.offset,
                }),
                session.offset,
            ))
        }
        .await;
        Ok(super::body::finish(result, &mut stream).await?)
    }

    /// Complete an upload
    ///
    /// Turns the received bytes into a file. With an `expected_digest` that does not match,
    /// answers 422 and nothing is kept. A 503 (the storage backend or the database
    /// unavailable) or a 507 (no room under the tenant's quota or on the disk) keeps the
    /// session and its bytes: complete again later.
    #[oai(
        path = "/uploads/:id/complete",
        method = "post",
        operation_id = "completeUpload"
    )]
    async fn complete(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
    ) -> Answer<CompletedUpload, operations::CompleteUpload> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let file: FileInfo = state
            .registry
            .complete_upload(&principal.tenant, id.0)
            .await?
            .into();
        let location = format!("/files/{}", file.id);
        Ok(CompletedUpload::Created(Json(file), location))
    }

    /// Cancel an upload
    #[oai(
        path = "/uploads/:id",
        method = "delete",
        operation_id = "cancelUpload"
    )]
    async fn cancel(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
    ) -> Answer<Cancelled, operations::CancelUpload> {
        let principal = state.authorize(&auth, Scope::Write)?;
        state
            .registry
            .cancel_upload(&principal.tenant, id.0)
            .await?;
        Ok(Cancelled::NoContent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        let c = parse_content_range("bytes 0-99/1000").unwrap();
        assert_eq!((c.start, c.end, c.total), (0, Some(99), Some(1000)));
        let c = parse_content_range("bytes 100-199/*").unwrap();
        assert_eq!((c.start, c.end, c.total), (100, Some(199), None));
        for bad in [
            "",
            "bytes",
            "bytes 0-99",
            "bytes 5-1/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes -1-5/9",
            "bytes 0-x/9",
            "bytes 0-1/-3",
            "bytes 0-99999999999999999999999/*",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }
}

//! `/packages/{id}/files` and `/packages/{id}/links`: a package's files, added (raw body,
//! form, or bytes the tenant holds), read by path, removed.

use super::AppState;
use super::error::{Answer, ApiError, ApiResult};
use super::form::{Part, Parts, StreamedForm};
use super::operations;
use super::packages::given;
use super::responses::Download;
use super::schemas::{FileInfo, LinkFile, LinkFiles, LinkedFiles};
use super::security::Auth;
use crate::auth::Scope;
use crate::domain::{PackageId, RelativePath};
use crate::identity::ContentAddress;
use crate::registry::{self, IngestRequest, LinkRequest};
use poem::web::Data;
use poem::{Body, Request};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiResponse, Multipart, OpenApi};
use std::sync::Arc;
use uuid::Uuid;

pub struct PackageFilesApi;

#[derive(ApiResponse)]
enum CreatedFile {
    /// The new file.
    #[oai(status = 201)]
    Created(Json<FileInfo>, #[oai(header = "Location")] String),
}

impl CreatedFile {
    fn new(file: FileInfo) -> Self {
        let location = format!("/files/{}", file.id);
        CreatedFile::Created(Json(file), location)
    }
}

#[derive(ApiResponse)]
enum LinkedResponse {
    /// The new files, in request order.
    #[oai(status = 201)]
    Created(Json<LinkedFiles>),
}

/// `POST /packages/{id}/files` form (its description; the form is read as a stream, see
/// [`super::form`]). Text parts are at most 4 KiB each.
#[derive(Debug, Multipart)]
#[allow(dead_code)]
struct FileUpload {
    /// The bytes; the part's filename is the default relative path.
    file: Upload,
    /// Path inside the package (default: the file part's filename).
    relative_path: Option<String>,
    /// Media type (default: the file part's content type, else application/octet-stream).
    media_type: Option<String>,
    /// `blake3:<hex>` or `sha256:<hex>` the bytes must have.
    expected_digest: Option<String>,
}

fn parse_address(text: &str, field: &str) -> ApiResult<ContentAddress> {
    text.parse()
        .map_err(|e| ApiError::from(crate::Error::InvalidInput(format!("`{field}`: {e}"))))
}

/// The request's Content-Length, if it sent one.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The request's `If-Match` precondition, if it states one.
fn if_match(req: &Request) -> Option<registry::IfMatch> {
    let values = req.headers().get_all(poem::http::header::IF_MATCH);
    values.iter().next()?;
    // A value that is not text names no tag: it matches nothing.
    Some(registry::IfMatch::parse(
        values.iter().map(|v| v.to_str().unwrap_or("")),
    ))
}

/// A removal's answer.
#[derive(ApiResponse)]
pub enum Removed {
    /// Removed.
    #[oai(status = 204)]
    Done,
}

impl PackageFilesApi {
    /// The file at `path` of package `id`, served as `GET` (or `HEAD`) of its download.
    async fn serve_path(
        state: &AppState,
        auth: &Auth,
        req: &Request,
        id: Uuid,
        path: &str,
        head: bool,
    ) -> Answer<Download, operations::DownloadFileByPath> {
        let principal = state.authorize(auth, Scope::Read)?;
        let path = RelativePath::new(path)?;
        let file = state
            .registry
            .file_at(&principal.tenant, PackageId(id), &path)
            .await?;
        Ok(super::files::serve(state, &principal, req, file, head).await?)
    }

    async fn ingest(
        state: &AppState,
        tenant: &crate::domain::TenantId,
        package: Uuid,
        request: IngestRequest,
        body: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send,
        size: Option<u64>,
    ) -> ApiResult<CreatedFile> {
        let record = state
            .registry
            .ingest_file_sized(tenant, PackageId(package), request, body, size)
            .await?;
        Ok(CreatedFile::new(record.into()))
    }

    /// Reads a form's parts in order, streaming its file part into a staged write, then
    /// records the file the text parts describe (they may come before or after the file).
    async fn upload_parts(
        state: &AppState,
        tenant: &crate::domain::TenantId,
        package: PackageId,
        parts: &mut Parts,
        replace: Option<bool>,
        if_match: Option<registry::IfMatch>,
    ) -> ApiResult<CreatedFile> {
        let registry = &state.registry;
        let mut texts = std::collections::HashMap::new();
        let mut staged: Option<registry::StagedFile> = None;
        let mut file_part = (None, None);
        let read = async {
            while let Some(part) = parts.next().await.map_err(crate::Error::from)? {
                match part {
                    Part::Text { name, value } => {
                        texts.insert(name, value);
                    }
                    Part::File {
                        file_name,
                        content_type,
                        body,
                    } => {
                        // Text parts sent first can be checked before the bytes are stored.
                        if let Some(path) = texts.get("relative_path") {
                            let early = IngestRequest {
                                relative_path: RelativePath::new(path)?,
                                media_type: None,
                                expected_digest: None,
                                replace: replace.unwrap_or(false),
                                if_match: if_match.clone(),
                            };
                            registry.check_can_add_file(tenant, package, &early).await?;
                        }
                        file_part = (file_name, content_type);
                        staged = Some(registry.stage_file(tenant, package, body).await?);
                    }
                }
            }
            let (file_name, content_type) = file_part;
            let path = match texts.get("relative_path").or(file_name.as_ref()) {
                Some(p) => RelativePath::new(p)?,
                None => {
                    return Err(crate::Error::InvalidInput(
                        "give `relative_path` or a filename on the `file` part".into(),
                    )
                    .into());
                }
            };
            Ok::<_, ApiError>(IngestRequest {
                relative_path: path,
                media_type: texts.get("media_type").cloned().or(content_type),
                expected_digest: texts
                    .get("expected_digest")
                    .map(|d| parse_address(d, "expected_digest"))
                    .transpose()?,
                replace: replace.unwrap_or(false),
                if_match: if_match.clone(),
            })
        }
        .await;
        let (request, staged) = match (read, staged) {
            (Ok(request), Some(staged)) => (request, staged),
            (Ok(_), None) => {
                return Err(
                    crate::Error::InvalidInput("the form has no `file` part".into()).into(),
                );
            }
            (Err(e), staged) => {
                if let Some(staged) = staged {
                    let _ = staged.discard().await;
                }
                return Err(e);
            }
        };
        let record = registry
            .record_staged(tenant, package, request, staged)
            .await?;
        Ok(CreatedFile::new(record.into()))
    }

    fn check_declared_length(state: &AppState, req: &Request) -> ApiResult<()> {
        let declared = declared_length(req);
        let limit = state.registry.limits().max_file_size;
        match declared {
            // Multipart framing adds a little; the exact limit is enforced while streaming.
            Some(n) if n > limit.saturating_add(1 << 20) => {
                Err(crate::Error::LimitExceeded(format!(
                    "the request body ({n} bytes) exceeds the maximum file size of {limit} bytes"
                ))
                .into())
            }
            _ => Ok(()),
        }
    }
}

#[OpenApi(tag = "super::ApiTags::Packages")]
impl PackageFilesApi {
    /// Upload a file (multipart)
    ///
    /// Form part `file` holds the bytes (its filename is the default relative path); optional
    /// text parts `relative_path`, `media_type`, `expected_digest`.
    #[oai(
        path = "/packages/:id/files",
        method = "post",
        operation_id = "uploadFile"
    )]
    async fn upload(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
        /// Replace an existing file at the same path (implied by `If-Match`).
        replace: Query<Option<bool>>,
        form: StreamedForm<FileUpload>,
    ) -> Answer<CreatedFile, operations::UploadFile> {
        // Who is calling, and whether the package can take files, before a byte of the body
        // is read.
        let checked = async {
            let principal = state.authorize(&auth, Scope::Write)?;
            Self::check_declared_length(&state, req)?;
            state
                .registry
                .check_package_open(&principal.tenant, PackageId(id.0))
                .await?;
            Ok::<_, ApiError>(principal)
        }
        .await;
        let principal = match checked {
            Ok(principal) => principal,
            Err(e) => {
                form.refuse().await;
                return Err(e.into());
            }
        };
        let max_file = state.registry.limits().max_file_size;
        let mut parts = form
            .parts(
                &["relative_path", "media_type", "expected_digest"],
                "file",
                max_file,
            )
            .map_err(crate::Error::from)?;
        let result = Self::upload_parts(
            &state,
            &principal.tenant,
            PackageId(id.0),
            &mut parts,
            replace.0,
            if_match(req),
        )
        .await;
        if result.is_err() {
            parts.refuse().await;
        }
        Ok(result?)
    }

    /// Upload a file (raw body)
    ///
    /// The curl-friendly way: `curl -T file URL`. The body streams straight into storage. The
    /// relative path may contain `/` (literally or as `%2F`). The request's Content-Type is the
    /// default media type.
    #[oai(
        path = "/packages/:id/files/:relative_path",
        method = "put",
        operation_id = "putFile"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn put(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
        /// Path inside the package.
        relative_path: Path<String>,
        /// Replace an existing file at the same path (implied by `If-Match`).
        replace: Query<Option<bool>>,
        /// Media type (default: the request's Content-Type, else application/octet-stream).
        media_type: Query<Option<String>>,
        /// `blake3:<hex>` or `sha256:<hex>` the bytes must have; on mismatch nothing is kept.
        expected_digest: Query<Option<String>>,
        body: Binary<Body>,
    ) -> Answer<CreatedFile, operations::PutFile> {
        let mut stream = super::body::stream(body.0);
        let result = async {
            let principal = state.authorize(&auth, Scope::Write)?;
            Self::check_declared_length(&state, req)?;
            let content_type = req
                .content_type()
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            let request = IngestRequest {
                relative_path: RelativePath::new(&relative_path.0)?,
                media_type: given(media_type.0).or(content_type),
                expected_digest: given(expected_digest.0)
                    .as_deref()
                    .map(|d| parse_address(d, "expected_digest"))
                    .transpose()?,
                replace: replace.0.unwrap_or(false),
                if_match: if_match(req),
            };
            // The raw body is the file: its Content-Length is the file's size.
            let size = declared_length(req);
            Self::ingest(&state, &principal.tenant, id.0, request, &mut stream, size).await
        }
        .await;
        Ok(super::body::finish(result, &mut stream).await?)
    }

    /// Download a file by its path in its package
    ///
    /// What `GET /files/{id}/download` answers for the file at this path (ranges, `ETag`,
    /// 304, `Repr-Digest`, `Content-Disposition`), so `curl -OJ` and browsers work with the
    /// names people know. The path may contain `/`. 410 once the package has expired.
    #[oai(
        path = "/packages/:id/files/:relative_path",
        method = "get",
        operation_id = "downloadFileByPath"
    )]
    async fn download_by_path(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
        /// Path inside the package.
        relative_path: Path<String>,
    ) -> Answer<Download, operations::DownloadFileByPath> {
        Self::serve_path(&state, &auth, req, id.0, &relative_path.0, false).await
    }

    /// A file's download headers, by its path
    ///
    /// The headers `GET` would answer (`Content-Length`, `ETag`, `Repr-Digest`,
    /// `Content-Range` for a range, ...), without the bytes.
    #[oai(
        path = "/packages/:id/files/:relative_path",
        method = "head",
        operation_id = "headFileByPath"
    )]
    async fn head_by_path(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
        /// Path inside the package.
        relative_path: Path<String>,
    ) -> Answer<Download, operations::DownloadFileByPath> {
        Self::serve_path(&state, &auth, req, id.0, &relative_path.0, true).await
    }

    /// Remove a file from an open package
    ///
    /// The path is free again; the file's bytes are collected unless another file names them.
    /// 409 once the package is finalized (it is immutable) or while it is under legal hold;
    /// with `If-Match`, 412 unless the file there is the one named.
    #[oai(
        path = "/packages/:id/files/:relative_path",
        method = "delete",
        operation_id = "deleteFile"
    )]
    async fn delete_file(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
        /// Path inside the package.
        relative_path: Path<String>,
    ) -> Answer<Removed, operations::DeleteFile> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let path = RelativePath::new(&relative_path.0)?;
        state
            .registry
            .remove_file(
                &principal.tenant,
                PackageId(id.0),
                &path,
                &principal.name,
                if_match(req).as_ref(),
            )
            .await?;
        Ok(Removed::Done)
    }

    /// Add a file from bytes the tenant already holds
    ///
    /// No bytes are sent: use `POST /blobs/missing` to learn which addresses need uploading.
    /// Unknown addresses answer 404.
    #[oai(
        path = "/packages/:id/links",
        method = "post",
        operation_id = "linkFile"
    )]
    async fn link(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<LinkFile>,
    ) -> Answer<CreatedFile, operations::LinkFile> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let body = body.0;
        let record = state
            .registry
            .link_file(
                &principal.tenant,
                PackageId(id.0),
                RelativePath::new(&body.relative_path.0)?,
                parse_address(&body.content_address.0, "content_address")?,
                body.media_type.0.map(String::from),
                body.replace.0.unwrap_or(false),
            )
            .await?;
        Ok(CreatedFile::new(record.into()))
    }

    /// Add many files from held bytes
    ///
    /// Like `POST /packages/{id}/links` for up to 1,000 files at once, in one transaction: all
    /// are added, or (when one cannot be, named in the problem) none. This is how a client
    /// re-sends a tree the server already holds without a request per file.
    #[oai(
        path = "/packages/:id/links/batch",
        method = "post",
        operation_id = "linkFiles"
    )]
    async fn link_batch(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<LinkFiles>,
    ) -> Answer<LinkedResponse, operations::LinkFiles> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let links = body
            .0
            .links
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let field = format!("links[{i}].content_address");
                Ok(LinkRequest {
                    relative_path: RelativePath::new(&l.relative_path.0).map_err(|e| {
                        ApiError::from(crate::Error::InvalidInput(format!(
                            "links[{i}].relative_path: {e}"
                        )))
                    })?,
                    content_address: parse_address(&l.content_address.0, &field)?,
                    media_type: l.media_type.0.map(String::from),
                    replace: l.replace.0.unwrap_or(false),
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let records = state
            .registry
            .link_files(&principal.tenant, PackageId(id.0), links)
            .await?;
        Ok(LinkedResponse::Created(Json(LinkedFiles {
            files: records.into_iter().map(Into::into).collect(),
        })))
    }
}

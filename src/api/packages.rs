//! `/packages`: create, list, read, finalize, abandon or withdraw. Their files are in
//! `package_files.rs`, their manifests in `manifests.rs`.

use super::AppState;
use super::error::{Answer, ApiError, ApiResult};
use super::operations;
use super::problem::Problem;
use super::schemas::{CreatePackage, Package, PackageList};
use super::security::Auth;
use crate::auth::Scope;
use crate::domain::{Metadata, PackageId};
use crate::manifest::SuppliedProvenance;
use crate::manifest::provenance::ProvenanceError;
use crate::registry::{self, NewPackage, PackageFilter};
use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use std::sync::Arc;
use uuid::Uuid;

pub struct PackagesApi;

#[derive(ApiResponse)]
enum CreatedPackage {
    /// The new package.
    #[oai(status = 201)]
    Created(Json<Package>, #[oai(header = "Location")] String),
}

/// An optional query value, where an empty value (`?cursor=`) means absent.
pub(super) fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// An optional JSON object body, read by hand (poem-openapi has no optional bodies; these are
/// declared in the spec by `spec.rs`): empty is `None`; otherwise it must be
/// `application/json`, one object with no member twice and none but `members`.
fn optional_object(
    req: &Request,
    body: &[u8],
    members: &[&str],
) -> ApiResult<Option<serde_json::Map<String, serde_json::Value>>> {
    if body.is_empty() {
        return Ok(None);
    }
    let content_type = req.content_type().unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::from_problem(Problem::new(
            poem::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected `application/json`, got `{}`",
                content_type.escape_debug()
            ),
        )));
    }
    let value = crate::manifest::provenance::parse_strict_json(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| !members.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown member `{}` (the body has only {})",
            unknown.escape_debug(),
            members
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Some(object))
}

/// The `reason` of an optional `DELETE /packages/{id}` body (`{"reason": "..."}`, declared by
/// hand in the spec as `DeletePackage`).
fn removal_reason(req: &Request, body: &[u8]) -> ApiResult<Option<String>> {
    let Some(members) = optional_object(req, body, &["reason"])? else {
        return Ok(None);
    };
    match members.get("reason") {
        None => Ok(None),
        Some(serde_json::Value::String(reason)) => Ok(Some(reason.clone())),
        Some(_) => Err(ApiError::bad_request("`reason` must be a string")),
    }
}

/// The provenance of an optional `POST /packages/{id}/finalize` body (`{"provenance":
/// {"predicate_type": "...", "predicate": {...}}}`, declared by hand in the spec as
/// `FinalizePackage`), checked: 413 over `max_bytes`, 422 for values the manifest cannot
/// record exactly.
fn supplied_provenance(
    req: &Request,
    body: &[u8],
    max_bytes: u64,
) -> ApiResult<Option<SuppliedProvenance>> {
    // Parsing costs a multiple of the body's size: a body that cannot hold provenance within
    // the bound is refused unread (its canonical JSON is never longer than the JSON it comes
    // from, however indented).
    let bound = max_bytes.saturating_mul(4).saturating_add(4096);
    if body.len() as u64 > bound {
        return Err(ApiError::from_problem(Problem::new(
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is {} bytes: provenance is at most {max_bytes} bytes in canonical \
                 JSON (ARTIFACTSTORE_MAX_PROVENANCE), and no body over {bound} bytes holds it",
                body.len()
            ),
        )));
    }
    let Some(mut members) = optional_object(req, body, &["provenance"])? else {
        return Ok(None);
    };
    let Some(provenance) = members.remove("provenance") else {
        return Ok(None);
    };
    let serde_json::Value::Object(mut provenance) = provenance else {
        return Err(ApiError::bad_request("`provenance` must be an object"));
    };
    if let Some(unknown) = provenance
        .keys()
        .find(|k| !matches!(k.as_str(), "predicate_type" | "predicate"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown member `provenance.{}` (it has `predicate_type` and `predicate`)",
            unknown.escape_debug()
        )));
    }
    let predicate_type = match provenance.remove("predicate_type") {
        None => None,
        Some(serde_json::Value::String(kind)) => Some(kind),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`provenance.predicate_type` must be a string (a URI)",
            ));
        }
    };
    let Some(predicate) = provenance.remove("predicate") else {
        return Err(ApiError::bad_request(
            "`provenance` needs `predicate` (an object)",
        ));
    };
    SuppliedProvenance::new(predicate_type, predicate, max_bytes)
        .map(Some)
        .map_err(|e| {
            let status = match e {
                ProvenanceError::TooLarge(_) => poem::http::StatusCode::PAYLOAD_TOO_LARGE,
                ProvenanceError::Invalid(_) => poem::http::StatusCode::UNPROCESSABLE_ENTITY,
            };
            ApiError::from_problem(Problem::new(status, format!("provenance: {e}")))
        })
}

#[OpenApi(tag = "super::ApiTags::Packages")]
impl PackagesApi {
    /// Create a package
    ///
    /// Opens a package that accepts files until it is finalized.
    #[oai(path = "/packages", method = "post", operation_id = "createPackage")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        body: Json<CreatePackage>,
    ) -> Answer<CreatedPackage, operations::CreatePackage> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let body = body.0;
        let package = state
            .registry
            .create_package(
                &principal.tenant,
                NewPackage {
                    producer: body.producer.0,
                    subject: body.subject.0,
                    retention_class: body.retention_class.0.map(String::from),
                    metadata: Metadata::new(
                        body.metadata
                            .0
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect(),
                    )?,
                },
            )
            .await?;
        let location = format!("/packages/{}", package.id);
        Ok(CreatedPackage::Created(Json(package.into()), location))
    }

    /// List packages
    ///
    /// Newest first. Filters combine with AND. Pages are stable under concurrent inserts: pass
    /// `next_cursor` back as `cursor`.
    #[oai(path = "/packages", method = "get", operation_id = "listPackages")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        /// Exact producer.
        producer: Query<Option<String>>,
        /// Exact subject.
        subject: Query<Option<String>>,
        /// Exact retention class.
        retention_class: Query<Option<String>>,
        /// `open` or `finalized`.
        status: Query<Option<crate::registry::PackageStatus>>,
        /// Page size, 1-1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Opaque cursor from a previous page.
        cursor: Query<Option<String>>,
        /// Metadata filters, `<key>=<value>` each (repeat the parameter for several keys):
        /// packages whose metadata has each key with exactly that value, e.g.
        /// `?meta=git.sha%3Dabc123`. Also spelled `?meta.<key>=<value>`.
        #[oai(default)]
        meta: Query<Vec<String>>,
    ) -> Answer<Json<PackageList>, operations::ListPackages> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let mut pairs: Vec<(String, String)> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .filter_map(|(k, v)| {
                    k.strip_prefix("meta.")
                        .map(|k| (k.to_owned(), v.into_owned()))
                })
                .collect();
        for pair in &meta.0 {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(crate::Error::InvalidInput(format!(
                    "the `meta` filter `{}` is not `<key>=<value>`",
                    pair.escape_debug()
                ))
                .into());
            };
            pairs.push((key.to_owned(), value.to_owned()));
        }
        // One value per key (two would match nothing), and keys and values as metadata can
        // have them: anything else is a mistake, not a filter that matches nothing.
        let mut by_key = std::collections::BTreeMap::new();
        for (key, value) in &pairs {
            if let Some(other) = by_key.insert(key.clone(), value.clone())
                && other != *value
            {
                return Err(crate::Error::InvalidInput(format!(
                    "the metadata filter names `{key}` twice, with different values"
                ))
                .into());
            }
        }
        let metadata = crate::domain::Metadata::new(by_key)?;
        let filter = PackageFilter {
            producer: given(producer.0),
            subject: given(subject.0),
            retention_class: given(retention_class.0),
            status: status.0,
            metadata: metadata.entries().clone().into_iter().collect(),
            limit: limit.0.unwrap_or(100),
            cursor: given(cursor.0)
                .as_deref()
                .map(super::cursor::decode_package_cursor)
                .transpose()?,
        };
        let page = state
            .registry
            .list_packages(&principal.tenant, &filter)
            .await?;
        Ok(Json(PackageList {
            items: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor.map(super::cursor::encode_package_cursor),
        }))
    }

    /// Get a package and its files
    #[oai(path = "/packages/:id", method = "get", operation_id = "getPackage")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
    ) -> Answer<Json<Package>, operations::GetPackage> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let registry = &state.registry;
        let package = registry
            .get_package(&principal.tenant, PackageId(id.0))
            .await?;
        let files = registry
            .list_files(&principal.tenant, PackageId(id.0))
            .await?;
        let mut view: Package = package.into();
        view.files = Some(files.into_iter().map(Into::into).collect());
        let record = super::audit::retrieval(
            &principal,
            req,
            registry::RetrievalKind::Package,
            Some(PackageId(id.0)),
            None,
        );
        state.retrievals.record(record).await?;
        Ok(Json(view))
    }

    /// Abandon or withdraw a package
    ///
    /// An open package (write scope) is abandoned at once; a finalized one is withdrawn (admin
    /// scope: 403 without it). Either way its files go, their bytes collected unless another
    /// file names them; its record stays: it answers 410 from now on, a withdrawn package's
    /// manifest stays readable, and listings show who removed it, when and why (`removal`).
    /// 409 under legal hold; 410 when already gone. The body (`{"reason": ...}`) is optional.
    #[oai(
        path = "/packages/:id",
        method = "delete",
        operation_id = "deletePackage"
    )]
    async fn delete_package(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
        body: Vec<u8>,
    ) -> Answer<Json<Package>, operations::DeletePackage> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let reason = removal_reason(req, &body)?;
        let package = state
            .registry
            .remove_package(
                &principal.tenant,
                PackageId(id.0),
                &principal.name,
                reason,
                principal.scope >= Scope::Admin,
            )
            .await?;
        Ok(Json(package.into()))
    }

    /// Finalize a package
    ///
    /// The package becomes immutable and gets its manifest. Finalizing twice answers 409. The
    /// optional body (`FinalizePackage`) attaches the producer's provenance: an SLSA provenance
    /// predicate or any JSON object, recorded as given in the manifest's
    /// `provenance.supplied` and so in the signed attestation (413 past
    /// `ARTIFACTSTORE_MAX_PROVENANCE`; 422 for floats, integers beyond 2^53 - 1, or an SLSA v1
    /// predicate without the members SLSA requires).
    #[oai(
        path = "/packages/:id/finalize",
        method = "post",
        operation_id = "finalizePackage"
    )]
    async fn finalize(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
        body: Vec<u8>,
    ) -> Answer<Json<Package>, operations::FinalizePackage> {
        let principal = state.authorize(&auth, Scope::Write)?;
        let supplied = supplied_provenance(req, &body, state.max_provenance)?;
        let package = state
            .registry
            .finalize_package_with(
                &principal.tenant,
                PackageId(id.0),
                Some(principal.name.clone()),
                supplied,
            )
            .await?;
        Ok(Json(package.into()))
    }
}

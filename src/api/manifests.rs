//! `/packages/{id}/manifest` (and `.json`): a finalized package's manifest, recorded as read.

use super::AppState;
use super::error::{Answer, ApiError};
use super::operations;
use super::problem::Problem;
use super::responses::{
    CborManifest, JsonManifest, ManifestEncoding, manifest_encoding, manifest_response,
};
use super::security::Auth;
use crate::auth::Scope;
use crate::domain::PackageId;
use crate::registry;
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use std::sync::Arc;
use uuid::Uuid;

pub struct ManifestsApi;

/// Records a manifest read: its `size` bytes, or a 304.
async fn record_manifest(
    state: &AppState,
    principal: &crate::auth::Principal,
    req: &Request,
    package: PackageId,
    response: &poem::Response,
    size: usize,
) {
    let mut record = super::audit::retrieval(
        principal,
        req,
        registry::RetrievalKind::Manifest,
        Some(package),
        None,
    );
    record.status = response.status().as_u16();
    if response.status() == poem::http::StatusCode::NOT_MODIFIED {
        record.outcome = "not_modified";
    } else {
        record.bytes_served = size as u64;
    }
    state.retrievals.record(record).await;
}

#[OpenApi(tag = "super::ApiTags::Packages")]
impl ManifestsApi {
    /// Get the manifest (canonical CBOR)
    ///
    /// RFC 8949 deterministic encoding; `ETag` is the manifest digest. 404 until finalized.
    /// `Accept` chooses (`Vary: Accept`): its JCS (RFC 8785) JSON projection when it prefers
    /// `application/json` (as `getManifestJson` serves it, with a weak `ETag`), 406 when it
    /// names neither.
    #[oai(
        path = "/packages/:id/manifest",
        method = "get",
        operation_id = "getManifest"
    )]
    async fn manifest(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
    ) -> Answer<CborManifest, operations::GetManifest> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let encoding = manifest_encoding(req).ok_or_else(|| {
            ApiError::from_problem(Problem::new(
                poem::http::StatusCode::NOT_ACCEPTABLE,
                "the manifest is served as `application/cbor` or `application/json`; \
                 `Accept` names neither",
            ))
        })?;
        let stored = state
            .registry
            .get_manifest(&principal.tenant, PackageId(id.0))
            .await?;
        let bytes = match encoding {
            ManifestEncoding::Cbor => stored.cbor,
            ManifestEncoding::Json => {
                crate::manifest::Manifest::jcs(&stored.cbor).map_err(crate::Error::from)?
            }
        };
        let size = bytes.len();
        let response = manifest_response(req, &stored.digest, bytes, encoding, true);
        record_manifest(&state, &principal, req, PackageId(id.0), &response, size).await;
        Ok(CborManifest(response))
    }

    /// Get the manifest (JCS JSON)
    ///
    /// The RFC 8785 canonical JSON projection of the CBOR manifest; `ETag` is the manifest
    /// digest (of the CBOR bytes). 404 until finalized.
    #[oai(
        path = "/packages/:id/manifest.json",
        method = "get",
        operation_id = "getManifestJson"
    )]
    async fn manifest_json(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        req: &Request,
        id: Path<Uuid>,
    ) -> Answer<JsonManifest, operations::GetManifestJson> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let stored = state
            .registry
            .get_manifest(&principal.tenant, PackageId(id.0))
            .await?;
        let json = crate::manifest::Manifest::jcs(&stored.cbor).map_err(crate::Error::from)?;
        let size = json.len();
        let response = manifest_response(req, &stored.digest, json, ManifestEncoding::Json, false);
        record_manifest(&state, &principal, req, PackageId(id.0), &response, size).await;
        Ok(JsonManifest(response))
    }
}

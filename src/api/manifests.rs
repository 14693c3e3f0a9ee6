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

/// A DSSE envelope (<https://github.com/secure-systems-lab/dsse>).
#[derive(Debug, Clone, poem_openapi::Object, serde::Deserialize)]
pub struct DsseEnvelope {
    /// `application/vnd.in-toto+json`.
    #[oai(rename = "payloadType")]
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The in-toto Statement (v1), its JCS (RFC 8785) bytes in base64: subjects are the
    /// package's files (name = relative path; digests `sha256`, `blake3`), the predicate
    /// (`https://artifactstore.dev/attestation/package/v1`) names the package and carries the
    /// manifest's digest and provenance.
    pub payload: String,
    /// Ed25519 signatures (base64) over DSSE's pre-authentication encoding, by key id
    /// (`GET /keys`).
    pub signatures: Vec<DsseSignature>,
}

/// One signature of a [`DsseEnvelope`].
#[derive(Debug, Clone, poem_openapi::Object, serde::Deserialize)]
pub struct DsseSignature {
    /// The signing key's id (`GET /keys`).
    pub keyid: String,
    /// The signature, base64.
    pub sig: String,
}

/// A package's attestation.
#[derive(poem_openapi::ApiResponse)]
pub enum Attestation {
    /// The attestation signed when the package was finalized.
    #[oai(status = 200, content_type = "application/vnd.dsse.envelope.v1+json")]
    Ok(poem_openapi::payload::Json<DsseEnvelope>),
}

/// Records a manifest read: its `size` bytes, or a 304.
async fn record_manifest(
    state: &AppState,
    principal: &crate::auth::Principal,
    req: &Request,
    package: PackageId,
    response: &poem::Response,
    size: usize,
) -> crate::error::Result<()> {
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
    state.retrievals.record(record).await
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
        record_manifest(&state, &principal, req, PackageId(id.0), &response, size).await?;
        Ok(CborManifest(response))
    }

    /// Get the package's attestation
    ///
    /// The in-toto Statement about the package, in a DSSE envelope signed (Ed25519) when it
    /// was finalized: its files' names and digests, its manifest's digest and provenance.
    /// Verify it offline with `artifactstore verify-package`, or any DSSE verifier and the
    /// key from `GET /keys`. 404 while open, or for a package finalized by a process without
    /// a signing key; a withdrawn package's stays readable, like its manifest.
    #[oai(
        path = "/packages/:id/attestation",
        method = "get",
        operation_id = "getAttestation"
    )]
    async fn attestation(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
    ) -> Answer<Attestation, operations::GetAttestation> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let envelope = state
            .registry
            .get_attestation(&principal.tenant, PackageId(id.0))
            .await?;
        let envelope: DsseEnvelope = serde_json::from_slice(&envelope)
            .map_err(|e| crate::Error::Integrity(format!("a stored attestation: {e}")))?;
        Ok(Attestation::Ok(poem_openapi::payload::Json(envelope)))
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
        record_manifest(&state, &principal, req, PackageId(id.0), &response, size).await?;
        Ok(JsonManifest(response))
    }
}

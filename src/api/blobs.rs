//! `/blobs`: dedup queries.

use super::AppState;
use super::error::{Answer, ApiError, ApiResult};
use super::operations;
use super::schemas::{MissingBlobs, MissingBlobsRequest};
use super::security::Auth;
use crate::auth::Scope;
use crate::identity::ContentAddress;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;
use std::sync::Arc;

pub struct BlobsApi;

#[OpenApi(tag = "super::ApiTags::Blobs")]
impl BlobsApi {
    /// Which content addresses must be uploaded
    ///
    /// Answers the subset of the given addresses that the caller's tenant does not hold. Only
    /// the caller's own files count, so the answer reveals nothing about other tenants.
    #[oai(
        path = "/blobs/missing",
        method = "post",
        operation_id = "missingBlobs"
    )]
    async fn missing(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        body: Json<MissingBlobsRequest>,
    ) -> Answer<Json<MissingBlobs>, operations::MissingBlobs> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let addresses = body
            .0
            .content_addresses
            .iter()
            .map(|a| {
                let a = &a.0;
                a.parse::<ContentAddress>().map_err(|e| {
                    ApiError::from(crate::Error::InvalidInput(format!(
                        "content address `{}`: {e}",
                        a.escape_debug()
                    )))
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let missing = state
            .registry
            .missing_blobs(&principal.tenant, &addresses)
            .await?;
        Ok(Json(MissingBlobs {
            missing: missing.iter().map(ToString::to_string).collect(),
        }))
    }
}

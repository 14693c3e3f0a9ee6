//! `/storage/locations`: where blobs are stored and what verification found.

use super::AppState;
use super::error::Answer;
use super::operations;
use super::security::Auth;
use crate::auth::Scope;
use crate::events::LocationStatus;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use std::sync::Arc;
use time::OffsetDateTime;

pub struct StorageApi;

/// One stored copy of a blob.
#[derive(Debug, Clone, Object)]
pub struct StorageLocation {
    /// `blake3:<hex>` of the bytes.
    pub content_address: String,
    /// Backend id.
    pub backend_id: String,
    /// Key within the backend.
    pub key: String,
    // No doc comment: poem-openapi would wrap the `$ref` in an `allOf`, which generated
    // clients cannot take for enums. `CopyStatus` (`LocationStatus`) carries the documentation.
    pub status: LocationStatus,
    /// Blob size in bytes.
    pub size: u64,
    /// When the copy was written (for a tenant's admin: when that tenant first stored these
    /// bytes).
    pub stored_at: OffsetDateTime,
    /// When it was last verified.
    #[oai(skip_serializing_if_is_none)]
    pub verified_at: Option<OffsetDateTime>,
}

/// A page of stored copies.
#[derive(Debug, Clone, Object)]
pub struct StorageLocationList {
    /// The copies, in digest order.
    pub items: Vec<StorageLocation>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// What a tenant stores, and the retention and collection backlog.
#[derive(Debug, Clone, Object)]
pub struct Usage {
    /// Live packages (open or finalized).
    pub packages: u64,
    /// Files in them.
    pub files: u64,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Sum of the sizes of the distinct blobs those files name (deduplicated).
    pub physical_bytes: u64,
    /// Bytes of blobs named by more than one of the tenant's packages.
    pub shared_bytes: u64,
    /// Finalized packages past their expiry, waiting for a worker.
    pub expiry_backlog: u64,
    /// Packages past their expiry but kept by a legal hold.
    pub held_past_expiry: u64,
    /// Blobs (of all tenants, a count only) no file references, waiting for collection.
    pub unreferenced_blobs: u64,
    /// Their bytes.
    pub unreferenced_bytes: u64,
    // No doc comment: poem-openapi would wrap the `$ref` in an `allOf` (see `QuotaUsed`).
    pub quota: super::tenants::Quota,
}

#[OpenApi(tag = "super::ApiTags::Storage")]
impl StorageApi {
    /// The caller's usage
    ///
    /// Read scope. Logical bytes (sum of file sizes), physical bytes (distinct blobs), bytes
    /// shared between the tenant's packages, the retention and garbage-collection backlog,
    /// and the tenant's quota.
    #[oai(path = "/usage", method = "get", operation_id = "getUsage")]
    async fn usage(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
    ) -> Answer<Json<Usage>, operations::GetUsage> {
        let principal = state.authorize(&auth, Scope::Read)?;
        let u = state.registry.usage(&principal.tenant).await?;
        let quota = state.registry.quota(&principal.tenant).await?;
        Ok(Json(Usage {
            packages: u.packages,
            files: u.files,
            logical_bytes: u.logical_bytes,
            physical_bytes: u.physical_bytes,
            shared_bytes: u.shared_bytes,
            expiry_backlog: u.expiry_backlog,
            held_past_expiry: u.held_past_expiry,
            unreferenced_blobs: u.unreferenced_blobs,
            unreferenced_bytes: u.unreferenced_bytes,
            quota: quota.into(),
        }))
    }

    /// List stored copies
    ///
    /// Admin scope. `?status=failed` lists the copies verification found damaged, `missing`
    /// those a backend lost. A tenant's admin sees the copies of its own files' bytes, with
    /// `stored_at` the time the tenant first stored those bytes (never another tenant's); an
    /// admin of the reserved `system` tenant (operators) sees every copy, with the time each
    /// copy was written.
    #[oai(
        path = "/storage/locations",
        method = "get",
        operation_id = "listStorageLocations"
    )]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        /// Only copies in this state.
        status: Query<Option<LocationStatus>>,
        /// Only copies on this backend.
        backend: Query<Option<String>>,
        /// Page size, 1-1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Opaque cursor from a previous page.
        cursor: Query<Option<String>>,
    ) -> Answer<Json<StorageLocationList>, operations::ListStorageLocations> {
        let principal = state.authorize(&auth, Scope::Admin)?;
        let limit = limit.0.unwrap_or(100) as i64;
        let after = cursor
            .0
            .filter(|c| !c.is_empty())
            .as_deref()
            .map(super::cursor::decode_location_cursor)
            .transpose()?;
        let owner = (!principal.operator).then_some(&principal.tenant);
        let mut rows = state
            .registry
            .list_locations(
                status.0,
                backend.0.as_deref().filter(|b| !b.is_empty()),
                owner,
                after,
                limit + 1,
            )
            .await?;
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|l| super::cursor::encode_location_cursor(&l.blake3, &l.backend_id))
        } else {
            None
        };
        Ok(Json(StorageLocationList {
            items: rows
                .into_iter()
                .map(|l| StorageLocation {
                    content_address: l.content_address().to_string(),
                    status: l.status,
                    size: l.size,
                    stored_at: l.stored_at.as_datetime(),
                    verified_at: l.verified_at.map(|t| t.as_datetime()),
                    backend_id: l.backend_id,
                    key: l.key,
                })
                .collect(),
            next_cursor,
        }))
    }
}

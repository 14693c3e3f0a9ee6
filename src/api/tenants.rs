//! `/tenants/{tenant}/quota`: what a tenant may hold (set by the operator) and what it holds.

use super::AppState;
use super::error::{Answer, ApiError, ApiResult};
use super::operations;
use super::security::Auth;
use crate::auth::Scope;
use crate::domain::TenantId;
use crate::registry::{Quota as Limits, TenantQuota};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::registry::MetaSchema;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON};
use poem_openapi::{Object, OpenApi};
use std::sync::Arc;

pub struct TenantsApi;

/// A limit: a whole number, or `null` for no limit. Required in a request, so that leaving a
/// member out is never taken for "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

super::text::json_value_type!(Limit, "integer(int64)", {
    let mut schema = MetaSchema::new_with_format("integer", "int64");
    schema.minimum = Some(0.0);
    schema.maximum = Some(i64::MAX as f64);
    schema.nullable = true;
    schema
});

impl ParseFromJSON for Limit {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            None => Err(ParseError::custom(
                "required: a whole number, or null for no limit",
            )),
            Some(serde_json::Value::Null) => Ok(Limit(None)),
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .filter(|n| i64::try_from(*n).is_ok())
                .map(|n| Limit(Some(n)))
                .ok_or_else(|| {
                    ParseError::custom("expected a whole number from 0 to 9223372036854775807")
                }),
            Some(other) => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Limit {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(
            self.0
                .map_or(serde_json::Value::Null, serde_json::Value::from),
        )
    }
}

/// `PUT /tenants/{tenant}/quota` body: every limit, each a number or `null` (no limit).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct SetQuota {
    /// Most logical bytes: the tenant's live files (open packages included) plus the sizes
    /// its upload sessions declared (or, undeclared, have received or are receiving), which
    /// they reserve until their files are recorded.
    pub max_bytes: Limit,
    /// Most live packages (open or finalized).
    pub max_packages: Limit,
    /// Most open upload sessions.
    pub max_upload_sessions: Limit,
}

/// What a tenant holds now, as its quotas count it.
#[derive(Debug, Clone, Object)]
pub struct QuotaUsed {
    /// Bytes of its live files.
    pub bytes: u64,
    /// Bytes its upload sessions not completed yet reserve.
    pub reserved_bytes: u64,
    /// Live packages.
    pub packages: u64,
    /// Open upload sessions.
    pub upload_sessions: u64,
}

/// A tenant's limits in force (`null`: no limit) and what it holds.
#[derive(Debug, Clone, Object)]
pub struct Quota {
    /// The tenant.
    pub tenant: String,
    /// Most logical bytes (files plus reservations).
    pub max_bytes: Limit,
    /// Most live packages.
    pub max_packages: Limit,
    /// Most open upload sessions (the server's default unless the operator set it).
    pub max_upload_sessions: Limit,
    /// When the operator last set these; absent: the defaults are in force.
    #[oai(skip_serializing_if_is_none)]
    pub set_at: Option<time::OffsetDateTime>,
    // No doc comment: poem-openapi would wrap the `$ref` in an `allOf`, which generated
    // clients turn into a second model. `QuotaUsed` carries the documentation.
    pub used: QuotaUsed,
}

impl From<TenantQuota> for Quota {
    fn from(q: TenantQuota) -> Self {
        Quota {
            tenant: q.tenant.to_string(),
            max_bytes: Limit(q.limits.max_bytes),
            max_packages: Limit(q.limits.max_packages),
            max_upload_sessions: Limit(q.limits.max_upload_sessions),
            set_at: q.set_at.map(|t| t.as_datetime()),
            used: QuotaUsed {
                bytes: q.used.bytes,
                reserved_bytes: q.used.reserved_bytes,
                packages: q.used.packages,
                upload_sessions: q.used.upload_sessions,
            },
        }
    }
}

fn tenant(name: &str) -> ApiResult<TenantId> {
    TenantId::new(name).map_err(ApiError::from)
}

#[OpenApi(tag = "super::ApiTags::Tenants")]
impl TenantsApi {
    /// Set a tenant's quota
    ///
    /// Only an admin token of the reserved `system` tenant (the operator). Give every limit, a
    /// number or `null` (no limit). Writes that would take the tenant past a limit are then
    /// refused with 507 (type ending in `/quota-exceeded`, members `quota`, `limit`, `used`);
    /// lowering a limit below what the tenant holds takes nothing away.
    #[oai(
        path = "/tenants/:tenant/quota",
        method = "put",
        operation_id = "setQuota"
    )]
    async fn set(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        /// The tenant: 1-63 of `a-z 0-9 . _ -`.
        #[oai(validator(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
        tenant: Path<String>,
        body: Json<SetQuota>,
    ) -> Answer<Json<Quota>, operations::SetQuota> {
        state.authorize_operator(&auth)?;
        let body = body.0;
        let quota = state
            .registry
            .set_quota(
                &self::tenant(&tenant.0)?,
                Limits {
                    max_bytes: body.max_bytes.0,
                    max_packages: body.max_packages.0,
                    max_upload_sessions: body.max_upload_sessions.0,
                },
            )
            .await?;
        Ok(Json(quota.into()))
    }

    /// Get a tenant's quota and usage
    ///
    /// The operator, or an admin token of that tenant (another tenant's quota answers 404).
    #[oai(
        path = "/tenants/:tenant/quota",
        method = "get",
        operation_id = "getQuota"
    )]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        /// The tenant: 1-63 of `a-z 0-9 . _ -`.
        #[oai(validator(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
        tenant: Path<String>,
    ) -> Answer<Json<Quota>, operations::GetQuota> {
        let principal = state.authorize(&auth, Scope::Admin)?;
        let tenant = self::tenant(&tenant.0)?;
        if !principal.operator && principal.tenant != tenant {
            return Err(crate::Error::not_found("tenant", &tenant).into());
        }
        Ok(Json(state.registry.quota(&tenant).await?.into()))
    }
}

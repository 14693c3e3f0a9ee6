//! Retention: classes (`/retention-classes`), legal holds and class changes of packages.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::models::Package;
use super::security::Auth;
use super::text::{Opt, Text};
use crate::auth::Scope;
use crate::model::PackageId;
use crate::registry::RetentionClass as Class;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

pub struct RetentionApi {
    pub state: AppState,
}

/// A retention class.
#[derive(Debug, Clone, Object)]
pub struct RetentionClass {
    /// Name.
    pub name: String,
    /// Seconds a finalized package of this class is kept; absent: forever.
    #[oai(skip_serializing_if_is_none)]
    pub duration_seconds: Option<u64>,
    /// What it is for.
    pub description: String,
}

impl From<Class> for RetentionClass {
    fn from(c: Class) -> Self {
        RetentionClass {
            name: c.name,
            duration_seconds: c.duration_seconds,
            description: c.description,
        }
    }
}

/// Every retention class.
#[derive(Debug, Clone, Object)]
pub struct RetentionClassList {
    /// By name.
    pub items: Vec<RetentionClass>,
}

/// `PUT /retention-classes/{name}` body: exactly one of `duration_seconds` and `forever`.
#[derive(Debug, Clone, Object)]
pub struct DefineRetentionClass {
    /// Seconds a finalized package is kept.
    #[oai(
        skip_serializing_if_is_none,
        validator(minimum(value = "0"), maximum(value = "1000000000000000"))
    )]
    pub duration_seconds: Opt<u64>,
    /// `true`: kept forever ("never" expires).
    #[oai(skip_serializing_if_is_none)]
    pub forever: Opt<bool>,
    /// What it is for (up to 256 bytes).
    #[oai(skip_serializing_if_is_none, validator(max_length = 256))]
    pub description: Opt<Text>,
}

/// `PUT /packages/{id}/legal-hold` body.
#[derive(Debug, Clone, Object)]
pub struct LegalHoldRequest {
    /// Why the package is held (1-256 bytes).
    #[oai(validator(min_length = 1, max_length = 256))]
    pub reason: Text,
}

/// `PATCH /packages/{id}/retention` body.
#[derive(Debug, Clone, Object)]
pub struct ChangeRetention {
    /// The new class.
    #[oai(validator(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub retention_class: Text,
    /// Allow the expiry to move earlier than the old class promised (admin scope).
    #[oai(skip_serializing_if_is_none)]
    pub force: Opt<bool>,
}

#[OpenApi(tag = "super::ApiTags::Retention")]
impl RetentionApi {
    /// List retention classes
    #[oai(
        path = "/retention-classes",
        method = "get",
        operation_id = "listRetentionClasses"
    )]
    async fn list(&self, auth: Auth) -> ApiResult<Json<RetentionClassList>> {
        self.state.authorize(&auth, Scope::Read)?;
        let items = self.state.registry.list_retention_classes().await?;
        Ok(Json(RetentionClassList {
            items: items.into_iter().map(Into::into).collect(),
        }))
    }

    /// Define a retention class
    ///
    /// Admin scope. Creates or redefines the class; packages already finalized keep the
    /// expiry they got. Give `duration_seconds`, or `forever: true`.
    #[oai(
        path = "/retention-classes/:name",
        method = "put",
        operation_id = "defineRetentionClass"
    )]
    async fn define(
        &self,
        auth: Auth,
        /// Class name: 1-63 of `a-z 0-9 . _ -`.
        #[oai(validator(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
        name: Path<String>,
        body: Json<DefineRetentionClass>,
    ) -> ApiResult<Json<RetentionClass>> {
        self.state.authorize(&auth, Scope::Admin)?;
        let body = body.0;
        let duration_seconds = match (body.duration_seconds.0, body.forever.0) {
            (Some(seconds), None | Some(false)) => Some(seconds),
            (None, Some(true)) => None,
            _ => {
                return Err(ApiError::from(crate::Error::InvalidInput(
                    "give exactly one of `duration_seconds` and `forever: true`".into(),
                )));
            }
        };
        let class = self
            .state
            .registry
            .define_retention_class(Class {
                name: name.0,
                duration_seconds,
                description: body.description.0.map(String::from).unwrap_or_default(),
            })
            .await?;
        Ok(Json(class.into()))
    }

    /// Put a legal hold on a package
    ///
    /// Admin scope. A held package never expires and never loses bytes; an expiry that falls
    /// due during the hold happens after its release.
    #[oai(
        path = "/packages/:id/legal-hold",
        method = "put",
        operation_id = "setLegalHold"
    )]
    async fn set_hold(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<LegalHoldRequest>,
    ) -> ApiResult<Json<Package>> {
        let principal = self.state.authorize(&auth, Scope::Admin)?;
        let package = self
            .state
            .registry
            .set_legal_hold(&principal.tenant, PackageId(id.0), body.0.reason.into())
            .await?;
        Ok(Json(package.into()))
    }

    /// Release a package's legal hold
    ///
    /// Admin scope. 409 when the package is not held.
    #[oai(
        path = "/packages/:id/legal-hold",
        method = "delete",
        operation_id = "releaseLegalHold"
    )]
    async fn release_hold(&self, auth: Auth, id: Path<Uuid>) -> ApiResult<Json<Package>> {
        let principal = self.state.authorize(&auth, Scope::Admin)?;
        let package = self
            .state
            .registry
            .release_legal_hold(&principal.tenant, PackageId(id.0))
            .await?;
        Ok(Json(package.into()))
    }

    /// Change a package's retention class
    ///
    /// Write scope. The expiry may be extended, never shortened below what the old class
    /// promised (409), unless an admin sends `force: true`.
    #[oai(
        path = "/packages/:id/retention",
        method = "patch",
        operation_id = "changeRetention"
    )]
    async fn change(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<ChangeRetention>,
    ) -> ApiResult<Json<Package>> {
        let force = body.0.force.0.unwrap_or(false);
        let principal = self
            .state
            .authorize(&auth, if force { Scope::Admin } else { Scope::Write })?;
        let package = self
            .state
            .registry
            .change_retention_class(
                &principal.tenant,
                PackageId(id.0),
                body.0.retention_class.into(),
                force,
            )
            .await?;
        Ok(Json(package.into()))
    }
}

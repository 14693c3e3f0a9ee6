//! Retention: classes (`/retention-classes`), legal holds and class changes of packages.

use super::AppState;
use super::error::Answer;
use super::operations;
use super::schemas::Package;
use super::security::Auth;
use super::text::{Opt, Text};
use crate::auth::Scope;
use crate::domain::PackageId;
use crate::registry::RetentionClass as Class;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use std::sync::Arc;
use uuid::Uuid;

pub struct RetentionApi;

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

/// A class's `duration_seconds` as sent: any whole number, so that one out of range is a 422
/// naming the range (the rule is the registry's), while the schema documents the range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassSeconds(Option<u64>);

super::text::json_value_type!(ClassSeconds, "integer(int64)", {
    let mut schema = poem_openapi::registry::MetaSchema::new_with_format("integer", "int64");
    schema.minimum = Some(1.0);
    schema.maximum = Some(crate::registry::MAX_CLASS_DURATION_SECONDS as f64);
    schema
});

impl poem_openapi::types::ParseFromJSON for ClassSeconds {
    fn parse_from_json(value: Option<serde_json::Value>) -> poem_openapi::types::ParseResult<Self> {
        use poem_openapi::types::ParseError;
        match value.unwrap_or_default() {
            serde_json::Value::Number(n) => {
                if let Some(n) = n.as_u64() {
                    Ok(ClassSeconds(Some(n)))
                } else if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f.fract() == 0.0) {
                    // Negative, or past u64: out of range (the registry says which range).
                    Ok(ClassSeconds(None))
                } else {
                    Err(ParseError::custom("expected a whole number of seconds"))
                }
            }
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl poem_openapi::types::ToJSON for ClassSeconds {
    fn to_json(&self) -> Option<serde_json::Value> {
        self.0.map(serde_json::Value::from)
    }
}

/// `PUT /retention-classes/{name}` body: exactly one of `duration_seconds` and `forever`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DefineRetentionClass {
    /// Seconds a finalized package is kept: 1 to 3,155,760,000 (100 years; use `forever`
    /// for longer). Other values answer 422.
    #[oai(skip_serializing_if_is_none)]
    pub duration_seconds: Opt<ClassSeconds>,
    /// `true`: kept forever ("never" expires).
    #[oai(skip_serializing_if_is_none)]
    pub forever: Opt<bool>,
    /// What it is for (up to 256 bytes).
    #[oai(skip_serializing_if_is_none, validator(max_length = 256))]
    pub description: Opt<Text>,
}

/// `PUT /packages/{id}/legal-hold` body.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct LegalHoldRequest {
    /// Why the package is held (1-256 bytes).
    #[oai(validator(min_length = 1, max_length = 256))]
    pub reason: Text,
}

/// `PATCH /packages/{id}/retention` body.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
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
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
    ) -> Answer<Json<RetentionClassList>, operations::ListRetentionClasses> {
        state.authorize(&auth, Scope::Read)?;
        let items = state.registry.list_retention_classes().await?;
        Ok(Json(RetentionClassList {
            items: items.into_iter().map(Into::into).collect(),
        }))
    }

    /// Define a retention class
    ///
    /// Classes are shared by every tenant, so only an admin token of the reserved `system`
    /// tenant may define them (others: 403). Creates or redefines the class; packages already
    /// finalized keep the expiry they got. Give `duration_seconds` (1 to 3,155,760,000), or
    /// `forever: true`.
    #[oai(
        path = "/retention-classes/:name",
        method = "put",
        operation_id = "defineRetentionClass"
    )]
    async fn define(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        /// Class name: 1-63 of `a-z 0-9 . _ -`.
        #[oai(validator(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
        name: Path<String>,
        body: Json<DefineRetentionClass>,
    ) -> Answer<Json<RetentionClass>, operations::DefineRetentionClass> {
        state.authorize_operator(&auth)?;
        let body = body.0;
        let duration_seconds = match (body.duration_seconds.0, body.forever.0) {
            // Out of range whatever its value: the registry's own check says what is allowed.
            (Some(ClassSeconds(seconds)), None | Some(false)) => Some(seconds.unwrap_or(0)),
            (None, Some(true)) => None,
            _ => {
                return Err(crate::Error::InvalidInput(
                    "give exactly one of `duration_seconds` and `forever: true`".into(),
                )
                .into());
            }
        };
        let class = state
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
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<LegalHoldRequest>,
    ) -> Answer<Json<Package>, operations::SetLegalHold> {
        let principal = state.authorize(&auth, Scope::Admin)?;
        let package = state
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
    async fn release_hold(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
    ) -> Answer<Json<Package>, operations::ReleaseLegalHold> {
        let principal = state.authorize(&auth, Scope::Admin)?;
        let package = state
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
        state: Data<&Arc<AppState>>,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<ChangeRetention>,
    ) -> Answer<Json<Package>, operations::ChangeRetention> {
        let force = body.0.force.0.unwrap_or(false);
        let principal = state.authorize(&auth, if force { Scope::Admin } else { Scope::Write })?;
        let package = state
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

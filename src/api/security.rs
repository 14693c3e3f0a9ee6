//! Bearer authentication as an OpenAPI security scheme. The token is optional at this layer
//! (anonymous reads and the development mode need no token); [`crate::auth::TokenStore`]
//! decides.

use super::AppState;
use super::error::ApiError;
use crate::auth::{Principal, Scope};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

/// `Authorization: Bearer <token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct BearerToken(Bearer);

/// A bearer token, or none.
#[derive(SecurityScheme)]
pub enum Auth {
    /// With a token.
    Bearer(BearerToken),
    /// Without one.
    #[oai(fallback)]
    Anonymous,
}

impl Auth {
    fn token(&self) -> Option<&str> {
        match self {
            Auth::Bearer(BearerToken(b)) => Some(b.token.as_str()),
            Auth::Anonymous => None,
        }
    }
}

impl AppState {
    /// The caller, if allowed `scope`.
    pub fn authorize(&self, auth: &Auth, scope: Scope) -> Result<Principal, ApiError> {
        let principal = self.tokens.authorize(auth.token(), scope)?;
        super::observe::record_tenant(principal.tenant.as_str());
        Ok(principal)
    }

    /// The caller, if it is the service's operator (an admin of the `system` tenant).
    pub fn authorize_operator(&self, auth: &Auth) -> Result<Principal, ApiError> {
        let principal = self.tokens.authorize_operator(auth.token())?;
        super::observe::record_tenant(principal.tenant.as_str());
        Ok(principal)
    }

    /// The caller, if it has any valid credentials (or none are needed); `None` otherwise.
    pub fn caller(&self, auth: &Auth) -> Option<Principal> {
        let principal = self.tokens.authenticate(auth.token()).ok()?;
        super::observe::record_tenant(principal.tenant.as_str());
        Some(principal)
    }
}

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

impl AppState {
    /// The caller, if allowed `scope`.
    pub fn authorize(&self, auth: &Auth, scope: Scope) -> Result<Principal, ApiError> {
        let token = match auth {
            Auth::Bearer(BearerToken(b)) => Some(b.token.as_str()),
            Auth::Anonymous => None,
        };
        Ok(self.tokens.authorize(token, scope)?)
    }
}

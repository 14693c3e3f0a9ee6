//! The error half of every operation: problem+json responses, declared in the spec.

use super::problem::{Problem, from_error};
use crate::auth::AuthError;
use poem::http::StatusCode;
use poem_openapi::{ApiResponse, payload::Json};

/// Every error an operation can answer with, as RFC 7807 problems.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// Malformed request (syntax, types, bad ids).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// Missing or invalid bearer token.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// The token lacks the needed scope.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such thing for this tenant.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The request body's media type is not accepted (or missing).
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// Conflicts with the current state (finalized package, existing path).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// Gone for good (expired).
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(Json<Problem>),
    /// An upload chunk does not start at the session's offset (`Upload-Offset` says where).
    #[oai(status = 416, content_type = "application/problem+json")]
    OffsetMismatch(Json<Problem>, #[oai(header = "Upload-Offset")] Option<u64>),
    /// A size or count limit was exceeded.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// Well-formed but invalid (unknown retention class, bad path, wrong digest).
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// A server fault; details are in the server log only.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database or storage is unavailable; retry later.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

impl ApiError {
    /// Wraps a problem in the variant of its status.
    pub fn from_problem(problem: Problem) -> Self {
        let p = Json(problem);
        match StatusCode::from_u16(p.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(p),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(p, "Bearer".into()),
            StatusCode::FORBIDDEN => ApiError::Forbidden(p),
            StatusCode::NOT_FOUND => ApiError::NotFound(p),
            StatusCode::CONFLICT => ApiError::Conflict(p),
            StatusCode::GONE => ApiError::Gone(p),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(p),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(p),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(p),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let offset = p.0.offset;
                ApiError::OffsetMismatch(p, offset)
            }
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(p),
            _ => ApiError::Internal(p),
        }
    }

    /// A 400 with a detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::from_problem(Problem::new(StatusCode::BAD_REQUEST, detail))
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        Self::from_problem(from_error(&e))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        };
        Self::from_problem(Problem::new(status, e.to_string()))
    }
}

/// Result of an operation.
pub type ApiResult<T> = Result<T, ApiError>;

//! The error half of every operation: problem+json responses, declared in the spec.

use super::problem::{Problem, ProblemBody, from_error, retry_after};
use crate::auth::AuthError;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{MetaResponses, Registry};
use std::marker::PhantomData;

/// Every error an operation can answer with, as RFC 7807 problems.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// Malformed request (syntax, types, bad ids).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(ProblemBody),
    /// Missing or invalid bearer token.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(ProblemBody, #[oai(header = "WWW-Authenticate")] String),
    /// The token lacks the needed scope.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(ProblemBody),
    /// No such thing for this tenant.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(ProblemBody),
    /// The request body's media type is not accepted (or missing).
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(ProblemBody),
    /// Conflicts with the current state (finalized package, existing path).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(ProblemBody),
    /// Gone for good (expired).
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(ProblemBody),
    /// An `If-Match` precondition does not hold: nothing was changed.
    #[oai(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(ProblemBody),
    /// None of the representations is acceptable (`Accept`).
    #[oai(status = 406, content_type = "application/problem+json")]
    NotAcceptable(ProblemBody),
    /// An upload chunk does not start at the session's offset (`Upload-Offset` says where).
    #[oai(status = 416, content_type = "application/problem+json")]
    OffsetMismatch(ProblemBody, #[oai(header = "Upload-Offset")] Option<u64>),
    /// A size or count limit was exceeded.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(ProblemBody),
    /// Well-formed but invalid (unknown retention class, bad path, wrong digest).
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(ProblemBody),
    /// A quota of the tenant (type ending in `/quota-exceeded`, with `quota`, `limit` and
    /// `used`) or the server's free disk space (type ending in `/insufficient-storage`) does
    /// not allow the write; nothing of it is kept.
    #[oai(status = 507, content_type = "application/problem+json")]
    InsufficientStorage(ProblemBody),
    /// A server fault; details are in the server log only.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(ProblemBody),
    /// Too many requests of this kind are open; retry after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(ProblemBody, #[oai(header = "Retry-After")] u64),
    /// The database or storage is unavailable; retry after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(ProblemBody, #[oai(header = "Retry-After")] u64),
}

impl ApiError {
    /// Wraps a problem in the variant of its status.
    pub fn from_problem(problem: Problem) -> Self {
        let p = ProblemBody(problem);
        match StatusCode::from_u16(p.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(p),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(p, "Bearer".into()),
            StatusCode::FORBIDDEN => ApiError::Forbidden(p),
            StatusCode::NOT_FOUND => ApiError::NotFound(p),
            StatusCode::CONFLICT => ApiError::Conflict(p),
            StatusCode::GONE => ApiError::Gone(p),
            StatusCode::PRECONDITION_FAILED => ApiError::PreconditionFailed(p),
            StatusCode::NOT_ACCEPTABLE => ApiError::NotAcceptable(p),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(p),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(p),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(p),
            StatusCode::INSUFFICIENT_STORAGE => ApiError::InsufficientStorage(p),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let offset = p.0.offset;
                ApiError::OffsetMismatch(p, offset)
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                ApiError::Unavailable(p, retry_after(StatusCode::SERVICE_UNAVAILABLE))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                ApiError::TooManyRequests(p, retry_after(StatusCode::TOO_MANY_REQUESTS))
            }
            _ => {
                // Every status a problem is made with has its variant: one without would
                // be sent as a 500 whose body says otherwise.
                debug_assert_eq!(p.0.status, 500, "no ApiError variant for {}", p.0.status);
                ApiError::Internal(p)
            }
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
            AuthError::Forbidden(_) | AuthError::NotOperator => StatusCode::FORBIDDEN,
        };
        Self::from_problem(Problem::new(status, e.to_string()))
    }
}

/// Result of a step of an operation (its problem not yet narrowed to the operation's own).
pub type ApiResult<T> = Result<T, ApiError>;

/// The problems one operation can answer with. The spec declares, for each operation, these
/// statuses and no others, so generated clients know what to expect; every operation may also
/// answer 500 (a fault) and 503 (the database or a backend unavailable).
pub trait Problems: Send + Sync + 'static {
    /// Its statuses, besides 500 and 503.
    const STATUSES: &'static [u16];
}

/// Declares operations' problem sets: `Name = [404, 409];`.
macro_rules! problems {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal),* $(,)?];)+) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub enum $name {}

            impl $crate::api::error::Problems for $name {
                const STATUSES: &'static [u16] = &[$($status),*];
            }
        )+
    };
}
pub(crate) use problems;

/// A problem of operation `P` (see [`Problems`]).
#[derive(Debug)]
pub struct Refusal<P: Problems> {
    error: ApiError,
    operation: PhantomData<P>,
}

/// Result of an operation whose problems are `P`.
pub type Answer<T, P> = Result<T, Refusal<P>>;

impl<P: Problems> Refusal<P> {
    fn declared(status: u16) -> bool {
        status == 500 || status == 503 || P::STATUSES.contains(&status)
    }
}

impl<P: Problems> From<ApiError> for Refusal<P> {
    fn from(error: ApiError) -> Self {
        Refusal {
            error,
            operation: PhantomData,
        }
    }
}

impl<P: Problems> From<crate::Error> for Refusal<P> {
    fn from(e: crate::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl<P: Problems> From<AuthError> for Refusal<P> {
    fn from(e: AuthError) -> Self {
        ApiError::from(e).into()
    }
}

impl<P: Problems> ApiResponse for Refusal<P> {
    fn meta() -> MetaResponses {
        let mut meta = ApiError::meta();
        meta.responses
            .retain(|r| r.status.is_some_and(Self::declared));
        meta
    }

    fn register(registry: &mut Registry) {
        ApiError::register(registry);
    }
}

impl<P: Problems> IntoResponse for Refusal<P> {
    fn into_response(self) -> Response {
        let response = self.error.into_response();
        // A status the spec does not declare for this operation is a bug in its declaration:
        // loud in tests (debug builds), logged in production.
        let status = response.status().as_u16();
        if !Self::declared(status) {
            tracing::error!(
                status,
                operation = std::any::type_name::<P>(),
                "a problem status this operation does not declare"
            );
            debug_assert!(
                false,
                "{} answered {status}, which it does not declare",
                std::any::type_name::<P>()
            );
        }
        response
    }
}

impl<P: Problems> From<Refusal<P>> for poem::Error {
    fn from(refusal: Refusal<P>) -> Self {
        poem::Error::from_response(refusal.into_response())
    }
}

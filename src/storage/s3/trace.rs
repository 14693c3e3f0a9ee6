//! Requests to S3 carry the W3C trace context of the operation that sends them (when traces are
//! exported), so an S3 service that traces too joins the request's trace.

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;

/// Adds `traceparent` (and `tracestate`) to every request, after signing: the signature does
/// not cover them, so no server refuses them.
#[derive(Debug)]
pub(super) struct TraceContext;

impl Intercept for TraceContext {
    fn name(&self) -> &'static str {
        "TraceContext"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _config: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context.request_mut().headers_mut();
        crate::telemetry::inject_current(|key, value| {
            headers.insert(key.to_owned(), value);
        });
        Ok(())
    }
}

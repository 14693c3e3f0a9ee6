//! Request bodies that handlers stream themselves (raw PUT, upload chunks).
//!
//! When a request is refused before its body has been read (auth, unknown package, bad path,
//! offset mismatch...), closing the connection with unread bytes in the socket makes the kernel
//! send a TCP reset, and the client may lose the problem response. So a refusal first drains
//! what is left of the body, bounded in bytes and time; a body too large to drain is cut off,
//! as intended for declared sizes over the limit.

use super::error::ApiResult;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use std::pin::Pin;
use std::time::Duration;

/// A request body as a stream of chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Most bytes read and discarded to deliver a refusal intact.
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The body of a request, as a stream.
pub fn stream(body: poem::Body) -> BodyStream {
    Box::pin(body.into_bytes_stream().map_err(std::io::Error::other))
}

/// Passes `result` through; if it is a refusal, first drains (a bounded amount of) the rest of
/// the body so the client can read the answer.
pub async fn finish<T>(result: ApiResult<T>, body: &mut BodyStream) -> ApiResult<T> {
    if result.is_err() {
        drain(body).await;
    }
    result
}

/// Reads and discards (a bounded amount of) the rest of a body being refused.
pub async fn drain(body: &mut BodyStream) {
    let drain = async {
        let mut read = 0;
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

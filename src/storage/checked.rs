//! Whole-blob reads checked against their digest as they stream: a client never receives a
//! complete corrupt body.

use super::ByteStream;
use crate::identity::Digest;
use futures::{StreamExt, TryStreamExt};

/// Passes `body` through while a hashing thread digests it (so hashing overlaps sending).
/// The last chunk is held back until the whole stream has hashed to `expected`, so a client
/// never receives a complete corrupt body: on a mismatch the stream fails instead, and the
/// server aborts the connection.
pub fn checked(body: ByteStream, expected: Digest, size: u64, what: String) -> ByteStream {
    struct State {
        body: ByteStream,
        chunks: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
        hasher: Option<tokio::task::JoinHandle<blake3::Hasher>>,
        held: Option<bytes::Bytes>,
        seen: u64,
        done: bool,
    }
    let (chunks, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        while let Some(chunk) = receiver.blocking_recv() {
            hasher.update(&chunk);
        }
        hasher
    });
    let state = State {
        body,
        chunks: Some(chunks),
        hasher: Some(hasher),
        held: None,
        seen: 0,
        done: false,
    };
    let checked = futures::stream::try_unfold(state, move |mut s| {
        let what = what.clone();
        async move {
            if s.done {
                return Ok(None);
            }
            while let Some(chunk) = s.body.try_next().await? {
                s.seen += chunk.len() as u64;
                if let Some(chunks) = &s.chunks {
                    // Fails only if the hashing thread died; the final check reports that.
                    let _ = chunks.send(chunk.clone()).await;
                }
                if let Some(previous) = s.held.replace(chunk) {
                    return Ok(Some((previous, s)));
                }
            }
            s.done = true;
            drop(s.chunks.take());
            let hasher = match s.hasher.take() {
                Some(h) => h.await.map_err(std::io::Error::other)?,
                None => blake3::Hasher::new(),
            };
            let digest = Digest(*hasher.finalize().as_bytes());
            check(expected, size, digest, s.seen, &what)?;
            Ok(s.held.take().map(|last| (last, s)))
        }
    });
    checked.boxed()
}

/// The end of a checked read: `Ok` when the bytes seen were `size` bytes hashing to
/// `expected`; otherwise logs what was observed and returns the error that aborts the stream.
pub fn check(
    expected: Digest,
    size: u64,
    observed: Digest,
    seen: u64,
    what: &str,
) -> std::io::Result<()> {
    if observed == expected && seen == size {
        return Ok(());
    }
    tracing::error!(
        blob = %what,
        observed = %observed.to_hex(),
        observed_size = seen,
        "stored bytes do not match their digest; download aborted"
    );
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "stored bytes failed their digest check",
    ))
}

/// The BLAKE3 digest and length of a stream.
pub async fn blake3_of(mut stream: ByteStream) -> std::io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        size += chunk.len() as u64;
        if chunk.len() >= 256 * 1024 {
            // Big chunks: hash off the async threads.
            let (h, _) = tokio::task::spawn_blocking(move || {
                let mut h = hasher;
                h.update(&chunk);
                (h, ())
            })
            .await
            .map_err(std::io::Error::other)?;
            hasher = h;
        } else {
            hasher.update(&chunk);
        }
    }
    Ok((Digest(*hasher.finalize().as_bytes()), size))
}

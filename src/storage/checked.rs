//! Whole-blob reads checked against their digest as they stream: a client never receives a
//! complete corrupt body.

use super::ByteStream;
use crate::identity::Digest;
use futures::{StreamExt, TryStreamExt};

/// Bytes gathered before they are hashed in one trip to the blocking pool.
const HASH_BATCH: usize = 1024 * 1024;
/// A last batch smaller than this is hashed in place (microseconds).
const INLINE_MAX: usize = 256 * 1024;

/// Where the running digest is: here, or on the blocking pool hashing a batch.
enum Hashing {
    Idle(Box<blake3::Hasher>),
    Busy(tokio::task::JoinHandle<blake3::Hasher>),
}

impl Hashing {
    async fn hasher(self) -> std::io::Result<blake3::Hasher> {
        match self {
            Hashing::Idle(h) => Ok(*h),
            Hashing::Busy(job) => job.await.map_err(std::io::Error::other),
        }
    }
}

/// Passes `body` through while it is hashed in batches of [`HASH_BATCH`] on the blocking pool
/// (one batch hashing while the next is sent, so hashing overlaps sending, and no thread waits
/// on a slow client). The last chunk is held back until the whole stream has hashed to
/// `expected`, so a client never receives a complete corrupt body: on a mismatch the stream
/// fails instead, and the server aborts the connection.
pub fn checked(body: ByteStream, expected: Digest, size: u64, what: String) -> ByteStream {
    struct State {
        body: ByteStream,
        hashing: Option<Hashing>,
        batch: Vec<bytes::Bytes>,
        batch_bytes: usize,
        held: Option<bytes::Bytes>,
        seen: u64,
        done: bool,
    }
    let state = State {
        body,
        hashing: Some(Hashing::Idle(Box::new(blake3::Hasher::new()))),
        batch: Vec::new(),
        batch_bytes: 0,
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
                s.batch_bytes += chunk.len();
                s.batch.push(chunk.clone());
                if s.batch_bytes >= HASH_BATCH {
                    // The previous batch is done by now (a batch hashes faster than one
                    // arrives); hand this one over.
                    let mut hasher = s.hashing.take().expect("hashing state").hasher().await?;
                    let batch = std::mem::take(&mut s.batch);
                    s.batch_bytes = 0;
                    s.hashing = Some(Hashing::Busy(tokio::task::spawn_blocking(move || {
                        for chunk in &batch {
                            hasher.update(chunk);
                        }
                        hasher
                    })));
                }
                if let Some(previous) = s.held.replace(chunk) {
                    return Ok(Some((previous, s)));
                }
            }
            s.done = true;
            let mut hasher = s.hashing.take().expect("hashing state").hasher().await?;
            let batch = std::mem::take(&mut s.batch);
            if s.batch_bytes >= INLINE_MAX {
                hasher = tokio::task::spawn_blocking(move || {
                    for chunk in &batch {
                        hasher.update(chunk);
                    }
                    hasher
                })
                .await
                .map_err(std::io::Error::other)?;
            } else {
                for chunk in &batch {
                    hasher.update(chunk);
                }
            }
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

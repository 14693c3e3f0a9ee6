//! Content identity: digests, content addresses and the one-pass dual hasher.

mod address;
mod hasher;

pub use address::{Algorithm, ContentAddress, Digest, DigestError};
pub use hasher::{DualDigest, DualHasher, HashPipeline};

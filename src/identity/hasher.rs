//! BLAKE3 + SHA-256 in one streaming pass.

use super::{ContentAddress, Digest};
use bytes::Bytes;
use sha2::Digest as _;

/// Both digests of some bytes, and their length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualDigest {
    /// BLAKE3-256 (the primary address).
    pub blake3: Digest,
    /// SHA-256.
    pub sha256: Digest,
    /// Number of bytes hashed.
    pub size: u64,
}

impl DualDigest {
    /// `blake3:<hex>`, the address the bytes are stored under.
    pub fn primary_address(&self) -> ContentAddress {
        ContentAddress::blake3(self.blake3)
    }

    /// `sha256:<hex>`.
    pub fn sha256_address(&self) -> ContentAddress {
        ContentAddress::sha256(self.sha256)
    }

    /// True when `address` names these bytes under either algorithm.
    pub fn matches(&self, address: &ContentAddress) -> bool {
        *address == self.primary_address() || *address == self.sha256_address()
    }
}

/// Feeds every byte to BLAKE3 and SHA-256 at once; each byte is read from memory once per
/// chunk while it is hot in cache.
#[derive(Clone, Default)]
pub struct DualHasher {
    blake3: blake3::Hasher,
    sha256: sha2::Sha256,
    size: u64,
}

impl DualHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        // Large chunks are hashed in 64 KiB slices so both hashes read the slice from L2.
        for slice in data.chunks(64 * 1024) {
            self.blake3.update(slice);
            self.sha256.update(slice);
        }
        self.size += data.len() as u64;
    }

    /// Both digests of everything `reader` gives, read 1 MiB at a time (memory stays flat
    /// whatever the size); `read` is told each chunk's length (progress).
    pub fn digest_reader(
        mut reader: impl std::io::Read,
        mut read: impl FnMut(usize),
    ) -> std::io::Result<DualDigest> {
        let mut hasher = Self::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(hasher.finalize()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    read(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Both digests of everything added so far.
    pub fn finalize(&self) -> DualDigest {
        let sha: [u8; 32] = self.sha256.clone().finalize().into();
        DualDigest {
            blake3: Digest(*self.blake3.finalize().as_bytes()),
            sha256: Digest(sha),
            size: self.size,
        }
    }

    /// Hashes one slice.
    pub fn digest(data: &[u8]) -> DualDigest {
        let mut h = Self::new();
        h.update(data);
        h.finalize()
    }
}

/// Hashing off the async threads: chunks are handed to a blocking thread through a bounded
/// channel, so hashing overlaps reading the network and writing the storage backend. The first
/// [`INLINE_HASH_BYTES`] are hashed in place (microseconds), so a small file costs no thread
/// hand-offs; the thread starts when more arrive.
pub struct HashPipeline {
    state: Pipeline,
}

/// Bytes hashed on the calling thread before a hashing thread is started.
pub const INLINE_HASH_BYTES: u64 = 256 * 1024;

enum Pipeline {
    Inline(Box<DualHasher>),
    Threaded {
        sender: tokio::sync::mpsc::Sender<Bytes>,
        worker: tokio::task::JoinHandle<DualHasher>,
    },
}

impl HashPipeline {
    /// A pipeline that continues from `state` (a fresh `DualHasher` for new bytes).
    pub fn new(state: DualHasher) -> Self {
        HashPipeline {
            state: Pipeline::Inline(Box::new(state)),
        }
    }

    /// Hashes or queues a chunk; waits only when the hashing thread is 8 chunks behind.
    pub async fn update(&mut self, chunk: Bytes) {
        if let Pipeline::Inline(hasher) = &mut self.state {
            if hasher.size + chunk.len() as u64 <= INLINE_HASH_BYTES {
                hasher.update(&chunk);
                return;
            }
            let mut hasher = std::mem::take(&mut **hasher);
            let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(8);
            let worker = tokio::task::spawn_blocking(move || {
                while let Some(chunk) = receiver.blocking_recv() {
                    hasher.update(&chunk);
                }
                hasher
            });
            self.state = Pipeline::Threaded { sender, worker };
        }
        if let Pipeline::Threaded { sender, .. } = &self.state {
            // The receiver lives until `finish`, so a send can only fail if the thread
            // panicked; `finish` reports that.
            let _ = sender.send(chunk).await;
        }
    }

    /// Waits for every queued chunk to be hashed and returns the digests.
    pub async fn finish(self) -> std::io::Result<DualDigest> {
        Ok(self.finish_state().await?.finalize())
    }

    /// Waits for every queued chunk and returns the hasher, to continue later.
    pub async fn finish_state(self) -> std::io::Result<DualHasher> {
        match self.state {
            Pipeline::Inline(hasher) => Ok(*hasher),
            Pipeline::Threaded { sender, worker } => {
                drop(sender);
                worker.await.map_err(std::io::Error::other)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hexes(d: &DualDigest) -> (String, String) {
        (d.blake3.to_hex(), d.sha256.to_hex())
    }

    /// Published vectors: FIPS 180-2 for SHA-256, the BLAKE3 reference `test_vectors.json`
    /// (input is the byte pattern `i % 251`).
    #[test]
    fn published_test_vectors() {
        let empty = DualHasher::digest(b"");
        assert_eq!(
            hexes(&empty),
            (
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into(),
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()
            )
        );
        let abc = DualHasher::digest(b"abc");
        assert_eq!(
            abc.sha256.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            abc.blake3.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let two_blocks =
            DualHasher::digest(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
        assert_eq!(
            two_blocks.sha256.to_hex(),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            DualHasher::digest(&pattern[..1]).blake3.to_hex(),
            "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"
        );
        assert_eq!(
            DualHasher::digest(&pattern[..1024]).blake3.to_hex(),
            "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"
        );
    }

    proptest! {
        #[test]
        fn chunked_streaming_equals_one_shot_references(
            data in proptest::collection::vec(any::<u8>(), 0..200_000),
            cuts in proptest::collection::vec(0usize..200_000, 0..12),
        ) {
            let mut hasher = DualHasher::new();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
            points.sort_unstable();
            let mut start = 0;
            for p in points.into_iter().chain([data.len()]) {
                hasher.update(&data[start..p]);
                start = p;
            }
            let got = hasher.finalize();
            let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
            prop_assert_eq!(got.blake3.0, *blake3::hash(&data).as_bytes());
            prop_assert_eq!(got.sha256.0, sha);
            prop_assert_eq!(got.size, data.len() as u64);
        }
    }

    /// Below, across and far past the inline limit (where the thread takes over), and from a
    /// resumed state.
    #[tokio::test]
    async fn pipeline_equals_direct_hashing() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        for len in [
            0,
            4096,
            INLINE_HASH_BYTES as usize,
            INLINE_HASH_BYTES as usize + 1,
            data.len(),
        ] {
            let mut pipeline = HashPipeline::new(DualHasher::new());
            for chunk in data[..len].chunks(100_003) {
                pipeline.update(Bytes::copy_from_slice(chunk)).await;
            }
            assert_eq!(
                pipeline.finish().await.unwrap(),
                DualHasher::digest(&data[..len])
            );
        }
        let mut first = HashPipeline::new(DualHasher::new());
        first
            .update(Bytes::copy_from_slice(&data[..1_000_000]))
            .await;
        let mut rest = HashPipeline::new(first.finish_state().await.unwrap());
        for chunk in data[1_000_000..].chunks(65_536) {
            rest.update(Bytes::copy_from_slice(chunk)).await;
        }
        assert_eq!(rest.finish().await.unwrap(), DualHasher::digest(&data));
    }
}

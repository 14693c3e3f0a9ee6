//! Reading blobs: streamed downloads (checked as they stream, when asked) and whole-blob
//! digests.

use super::append::{ALIGN, align_for};
use super::{ByteStream, Digest};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

/// Reads go to the client in chunks of this size: large enough for few system calls and
/// channel hops, small enough that a chunk just hashed is still in cache when it is sent.
const READ_CHUNK: usize = 64 * 1024;
/// Chunks read per trip to the blocking pool.
const READ_BATCH: usize = 16;
/// Read size when a whole blob is hashed for `verify` (on every core: see [`digest_file`]).
const DIGEST_READ: usize = 8 * 1024 * 1024;

/// What a whole-blob read is checked against.
pub(super) struct Check {
    pub(super) expected: Digest,
    pub(super) size: u64,
    pub(super) what: String,
}

/// The reading side of [`read_chunks`], moved to a blocking thread for each batch.
struct Reader {
    file: std::io::Take<std::fs::File>,
    check: Option<(Check, blake3::Hasher)>,
    /// The file offset the read began at.
    start: u64,
    seen: u64,
    at_end: bool,
    buf: BytesMut,
}

impl Reader {
    /// Reads up to [`READ_BATCH`] chunks straight into the buffers that are sent (one copy
    /// out of the page cache), hashing each while it is still in cache. At the end of the
    /// file it runs the check: a mismatch is an error.
    fn read_batch(&mut self) -> std::io::Result<Vec<Bytes>> {
        let mut chunks = Vec::with_capacity(READ_BATCH);
        while chunks.len() < READ_BATCH && !self.at_end {
            // Reuses the allocation of chunks the client has been sent already.
            align_for(&mut self.buf, READ_CHUNK, self.start + self.seen);
            while self.buf.len() < READ_CHUNK {
                match read_into_spare(&mut self.file, &mut self.buf, READ_CHUNK) {
                    Ok(0) => {
                        self.at_end = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let filled = self.buf.len();
            self.seen += filled as u64;
            if let Some((_, hasher)) = &mut self.check {
                hasher.update(&self.buf);
            }
            if filled > 0 {
                chunks.push(self.buf.split().freeze());
            }
        }
        if self.at_end
            && let Some((check, hasher)) = &self.check
        {
            let observed = Digest(*hasher.finalize().as_bytes());
            crate::storage::checked::check(
                check.expected,
                check.size,
                observed,
                self.seen,
                &check.what,
            )?;
        }
        Ok(chunks)
    }
}

/// Reads from `file` into `buf`'s spare capacity, up to `limit` bytes in all, and returns how
/// many bytes came (0 at the end). Reading into the spare capacity directly spares zeroing
/// every buffer first (which cost 4% of a download's CPU).
fn read_into_spare(
    file: &mut std::io::Take<std::fs::File>,
    buf: &mut BytesMut,
    limit: usize,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let want = (limit - buf.len())
        .min(buf.capacity() - buf.len())
        .min(usize::try_from(file.limit()).unwrap_or(usize::MAX));
    if want == 0 {
        return Ok(0);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory of at least `want` bytes owned by `buf`; read(2)
    // writes at most `want` bytes into it and reports how many, and exactly those many are
    // then marked initialised.
    let n = unsafe { libc::read(file.get_ref().as_raw_fd(), spare.as_mut_ptr().cast(), want) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    file.set_limit(file.limit() - n as u64);
    Ok(n)
}

type Batch = tokio::task::JoinHandle<(Reader, std::io::Result<Vec<Bytes>>)>;

fn spawn_batch(mut reader: Reader) -> Batch {
    tokio::task::spawn_blocking(move || {
        let chunks = reader.read_batch();
        (reader, chunks)
    })
}

/// Streams up to `length` bytes of `file` from `offset`, read in batches on the blocking pool
/// (one hop per [`READ_BATCH`] chunks, the next batch read while this one is sent). No thread
/// waits for a slow client, and at most about two batches are buffered, so memory stays flat.
/// With a `check`, the last chunk read is held back until the next batch or the check at the
/// end has passed (see [`BlobStore::get_checked`](crate::storage::BlobStore::get_checked)).
pub(super) fn read_chunks(
    mut file: std::fs::File,
    offset: u64,
    length: u64,
    check: Option<Check>,
) -> ByteStream {
    use std::io::{Read, Seek};
    struct State {
        reading: Option<Batch>,
        ready: std::collections::VecDeque<Bytes>,
        held: Option<Bytes>,
        hold_back: bool,
    }
    let hold_back = check.is_some();
    let start = move || -> std::io::Result<Reader> {
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))?;
        }
        Ok(Reader {
            file: file.take(length),
            check: check.map(|c| (c, blake3::Hasher::new())),
            start: offset,
            seen: 0,
            at_end: false,
            buf: BytesMut::new(),
        })
    };
    let first = tokio::task::spawn_blocking(move || match start() {
        Ok(mut reader) => {
            let chunks = reader.read_batch();
            (Some(reader), chunks)
        }
        Err(e) => (None, Err(e)),
    });
    let state = State {
        reading: None,
        ready: Default::default(),
        held: None,
        hold_back,
    };
    let stream =
        futures::stream::try_unfold((state, Some(first)), |(mut s, mut first)| async move {
            loop {
                if let Some(chunk) = s.ready.pop_front() {
                    return Ok(Some((chunk, (s, first))));
                }
                let (reader, chunks) = match (first.take(), s.reading.take()) {
                    (Some(first), _) => {
                        let (reader, chunks) = first.await.map_err(std::io::Error::other)?;
                        (reader, chunks)
                    }
                    (None, Some(batch)) => {
                        let (reader, chunks) = batch.await.map_err(std::io::Error::other)?;
                        (Some(reader), chunks)
                    }
                    (None, None) => return Ok(None),
                };
                let chunks = chunks?;
                let at_end = reader.as_ref().is_none_or(|r| r.at_end);
                s.ready.extend(s.held.take());
                s.ready.extend(chunks);
                if !at_end {
                    if s.hold_back {
                        s.held = s.ready.pop_back();
                    }
                    // Read the next batch while this one goes out.
                    s.reading = reader.map(spawn_batch);
                }
            }
        });
    stream.boxed()
}

/// The BLAKE3 digest and size of the whole of `file`. Large reads are hashed on every core
/// (BLAKE3's tree splits them), as `b3sum` does, but read, not mapped: a file truncated under
/// us is an error, not a SIGBUS.
pub(super) fn digest_file(mut file: std::fs::File) -> std::io::Result<(Digest, u64)> {
    use std::io::Read;
    let mut storage = vec![0u8; DIGEST_READ + ALIGN];
    let aligned = storage.as_ptr().align_offset(ALIGN);
    let buf = &mut storage[aligned..aligned + DIGEST_READ];
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        hasher.update_rayon(&buf[..filled]);
        size += filled as u64;
    }
    Ok((Digest(*hasher.finalize().as_bytes()), size))
}

/// Streams the first `length` bytes of `file` (all of it with `u64::MAX`), read the way
/// downloads are (aligned batches on the blocking pool, see [`read_chunks`]), for any code
/// that sends a local file's bytes on (adopting a spooled upload, re-hashing one).
pub fn file_stream(file: std::fs::File, length: u64) -> ByteStream {
    read_chunks(file, 0, length, None)
}

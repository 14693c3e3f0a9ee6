//! Appending a stream of chunks to a file: gathered into large writes, each made on the
//! blocking pool from a buffer aligned like the file offset it goes to, with writeback started
//! as the file grows. Used by staged writes and by upload-session spools.

use super::publish::{WRITEBACK_EVERY, start_writeback};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::Write;

/// Writes are gathered to this size, so each trip to the blocking pool moves a lot of bytes.
pub(crate) const WRITE_BATCH: usize = 1024 * 1024;
/// The first write's size; each further one doubles up to [`WRITE_BATCH`], so a small file
/// gets a small buffer.
const FIRST_BATCH: usize = 64 * 1024;

/// Buffers start at an address aligned like the file offset they are read from or written to,
/// modulo this. On some CPUs (seen on an AMD EPYC with FSRM and AVX2) the kernel's copy out of
/// the page cache runs about four times slower into a buffer misaligned by 8 or 16 bytes, as a
/// fresh heap allocation is: 1.3 s instead of 0.3 s per 2 GiB read. Writes go through the
/// same kind of copy, the other way, so their buffers are aligned alike (on an AVX-512 EPYC the
/// write copy showed no such penalty; what it did show is a cost per
/// freshly allocated page-cache page that varies from run to run in this VM, 0.25-3 s per
/// GiB, whatever the alignment).
pub(super) const ALIGN: usize = 64;

/// Makes the empty `buf` start at an address aligned like `file_offset` (modulo [`ALIGN`]),
/// with room for `want` bytes.
pub(super) fn align_for(buf: &mut BytesMut, want: usize, file_offset: u64) {
    debug_assert!(buf.is_empty());
    buf.reserve(want + ALIGN);
    let address = buf.spare_capacity_mut().as_ptr() as usize;
    let pad = (file_offset as usize).wrapping_sub(address) % ALIGN;
    if pad > 0 {
        buf.put_bytes(0, pad);
        buf.advance(pad);
    }
}

/// Whether `bytes` start at an address aligned like `file_offset`.
fn aligned_like(bytes: &[u8], file_offset: u64) -> bool {
    (bytes.as_ptr() as usize)
        .wrapping_sub(file_offset as usize)
        .is_multiple_of(ALIGN)
}

/// A file an [`Appender`] writes to: a plain file, or one held under a lock.
pub(crate) trait AppendFile: Send + 'static {
    /// The file written to.
    fn file(&self) -> &std::fs::File;
}

impl AppendFile for std::fs::File {
    fn file(&self) -> &std::fs::File {
        self
    }
}

impl AppendFile for nix::fcntl::Flock<std::fs::File> {
    fn file(&self) -> &std::fs::File {
        self
    }
}

/// Appends chunks to a file at its write position. Chunks are copied into a buffer aligned
/// like the file offset it will be written to (see [`ALIGN`]) and written a batch at a time
/// (growing from [`FIRST_BATCH`] to [`WRITE_BATCH`]), one trip to the blocking pool each; a
/// large chunk that is already aligned is written as it is. Writeback of what was written is
/// started every [`WRITEBACK_EVERY`] bytes, so a sync at the end finds little left to flush
/// and disk writes overlap hashing and the network. Memory stays at about one batch whatever
/// the file's size.
pub(crate) struct Appender<F: AppendFile> {
    file: Option<F>,
    buffer: BytesMut,
    /// The size the buffer is written out at.
    batch: usize,
    /// The file offset the buffer's first byte goes to: bytes handed to the file so far.
    position: u64,
    /// Start of the range whose writeback has not been started yet.
    writeback_from: u64,
}

impl<F: AppendFile> Appender<F> {
    /// Appends to `file`, whose write position is `position`.
    pub(crate) fn new(file: F, position: u64) -> Self {
        Appender {
            file: Some(file),
            buffer: BytesMut::new(),
            batch: FIRST_BATCH,
            position,
            writeback_from: position,
        }
    }

    /// Bytes handed to the file so far, plus those buffered.
    pub(crate) fn len(&self) -> u64 {
        self.position + self.buffer.len() as u64
    }

    /// Appends `chunk` (buffered; written once a batch is full).
    pub(crate) async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        if self.buffer.is_empty()
            && chunk.len() >= WRITE_BATCH
            && aligned_like(&chunk, self.position)
        {
            return self.write_out(chunk).await;
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if self.buffer.is_empty() {
                align_for(&mut self.buffer, self.batch, self.position);
            }
            // Never past the capacity reserved: growing would move the buffer off alignment.
            let take = rest.len().min(self.batch - self.buffer.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() >= self.batch {
                self.flush().await?;
                self.batch = (self.batch * 2).min(WRITE_BATCH);
            }
        }
        Ok(())
    }

    /// Writes out what is buffered.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = self.buffer.split().freeze();
        self.write_out(data).await
    }

    /// Writes out what is buffered, then runs `then` on the file in the same trip to the
    /// blocking pool, and hands the file back with its result. On an error the file is
    /// closed.
    pub(crate) async fn finish<T: Send + 'static>(
        mut self,
        then: impl FnOnce(&std::fs::File) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<(F, T)> {
        let data = self.buffer.split().freeze();
        let file = self.file.take().expect("file present until finished");
        tokio::task::spawn_blocking(move || {
            file.file().write_all(&data)?;
            let result = then(file.file())?;
            Ok((file, result))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Gives the file back, dropping anything still buffered.
    pub(crate) fn into_file(mut self) -> F {
        self.file.take().expect("file present until finished")
    }

    async fn write_out(&mut self, data: Bytes) -> std::io::Result<()> {
        let file = self.file.take().expect("file present until finished");
        let end = self.position + data.len() as u64;
        let writeback =
            (end - self.writeback_from >= WRITEBACK_EVERY).then_some((self.writeback_from, end));
        let (file, result) = tokio::task::spawn_blocking(move || {
            let r = file.file().write_all(&data);
            if r.is_ok()
                && let Some((from, to)) = writeback
            {
                start_writeback(file.file(), from, to);
            }
            (file, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        result?;
        self.position = end;
        if writeback.is_some() {
            self.writeback_from = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_like_the_file_offset() {
        let mut buf = BytesMut::new();
        for offset in (0..200u64).chain([4095, 4096, 65_537, u64::MAX / 2 + 3]) {
            align_for(&mut buf, WRITE_BATCH, offset);
            assert!(buf.is_empty());
            assert!(buf.capacity() >= WRITE_BATCH);
            let address = buf.spare_capacity_mut().as_ptr() as u64;
            assert_eq!(
                address.wrapping_sub(offset) % ALIGN as u64,
                0,
                "offset {offset}"
            );
            // As a read would: fill some, hand it on.
            buf.extend_from_slice(&[1; 100]);
            let _sent = buf.split().freeze();
        }
    }

    /// An appender at the start of a new file in a temporary directory.
    fn new_file() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Appender<std::fs::File>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        (dir, path, Appender::new(file, 0))
    }

    /// Every write the appender makes starts from a buffer aligned like its file offset, and
    /// the file ends up holding exactly the chunks, whatever their sizes.
    #[tokio::test]
    async fn appends_every_chunk_in_order_from_aligned_buffers() {
        let (_dir, path, mut appender) = new_file();
        let mut expected = Vec::new();
        let sizes = [
            1,
            7,
            4096,
            WRITE_BATCH + 3,
            100_000,
            2 * WRITE_BATCH,
            13,
            0,
            5,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            let chunk: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
            expected.extend_from_slice(&chunk);
            appender.write(Bytes::from(chunk)).await.unwrap();
            assert_eq!(appender.len(), expected.len() as u64);
            if !appender.buffer.is_empty() {
                let start = appender.position;
                assert!(aligned_like(&appender.buffer, start));
            }
        }
        drop(appender.finish(|f| f.sync_all()).await.unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    /// A large chunk already aligned like its offset is written as it is (no copy); what
    /// follows is buffered again, and the file holds both.
    #[tokio::test]
    async fn an_aligned_large_chunk_is_written_without_a_copy() {
        let (_dir, path, mut appender) = new_file();
        let mut big = BytesMut::new();
        align_for(&mut big, 2 * WRITE_BATCH, 0);
        big.extend((0..2 * WRITE_BATCH).map(|b| (b % 251) as u8));
        let big = big.freeze();
        assert!(aligned_like(&big, 0));
        appender.write(big.clone()).await.unwrap();
        assert_eq!(appender.position, big.len() as u64, "written straight out");
        assert!(appender.buffer.is_empty());
        appender.write(Bytes::from_static(b"tail")).await.unwrap();
        assert_eq!(appender.buffer.len(), 4);
        assert!(aligned_like(&appender.buffer, appender.position));
        drop(appender.finish(|f| f.sync_all()).await.unwrap());
        let mut expected = big.to_vec();
        expected.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}

//! A session's spool file: the durable record of the bytes it has received.

use bytes::Bytes;

/// Appends a chunk's bytes to a session's spool file (through the local backend's
/// [`Appender`](crate::storage::local::Appender): large aligned writes, writeback started as
/// it grows, so that the sync at the end of the chunk finds little left to flush).
pub(super) struct Spool {
    appender: crate::storage::local::Appender<nix::fcntl::Flock<std::fs::File>>,
}

impl Spool {
    pub(super) fn new(file: nix::fcntl::Flock<std::fs::File>, offset: u64) -> Self {
        Spool {
            appender: crate::storage::local::Appender::new(file, offset),
        }
    }

    pub(super) async fn write(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.appender.write(bytes).await
    }

    /// Writes what is buffered, cuts the file to `len` (dropping the bytes of a chunk that
    /// failed) and makes it durable.
    pub(super) async fn finish(
        self,
        len: u64,
    ) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
        let cut_and_sync =
            move |file: &std::fs::File| file.set_len(len).and_then(|()| file.sync_data());
        if len >= self.appender.len() {
            let (file, ()) = self.appender.finish(cut_and_sync).await?;
            return Ok(file);
        }
        // A failed chunk: its buffered bytes are not kept.
        let file = self.appender.into_file();
        tokio::task::spawn_blocking(move || cut_and_sync(&file).map(|()| file))
            .await
            .map_err(std::io::Error::other)?
    }
}

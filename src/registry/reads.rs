//! Reading files back.

use super::Registry;
use super::types::{FILE_COLUMNS, FileRecord};
use crate::error::{Error, Result};
use crate::identity::Digest;
use crate::model::{FileId, TenantId};
use crate::storage::{ByteRange, ByteStream};
use futures::{StreamExt, TryStreamExt};

/// A file's bytes (or a range of them), ready to stream.
pub struct FileDownload {
    /// The file.
    pub file: FileRecord,
    /// The range being sent; `None` for the whole file.
    pub range: Option<ByteRange>,
    /// The bytes.
    pub body: ByteStream,
}

impl Registry {
    /// A file's record.
    pub async fn get_file(&self, tenant: &TenantId, id: FileId) -> Result<FileRecord> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {FILE_COLUMNS} FROM files f JOIN blobs b ON b.blake3 = f.blake3 \
                     WHERE f.id = $1 AND f.tenant = $2"
                ),
                &[&id.0, &tenant.as_str()],
            )
            .await?
            .ok_or_else(|| Error::not_found("file", id))?;
        FileRecord::from_row(&row)
    }

    /// Streams a file, or `range` of it (which must lie within the file).
    pub async fn read_file(
        &self,
        tenant: &TenantId,
        id: FileId,
        range: Option<ByteRange>,
    ) -> Result<FileDownload> {
        let file = self.get_file(tenant, id).await?;
        if let Some(r) = range
            && (r.length == 0
                || r.offset
                    .checked_add(r.length)
                    .is_none_or(|end| end > file.size))
        {
            return Err(Error::InvalidInput(format!(
                "range {}+{} is outside the file's {} bytes",
                r.offset, r.length, file.size
            )));
        }
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT backend_id FROM storage_locations \
                 WHERE blake3 = $1 AND status = 'present' ORDER BY backend_id",
                &[&file.blake3.0.as_slice()],
            )
            .await?;
        drop(client);
        let address = file.content_address();
        let backend = rows
            .iter()
            .find_map(|r| self.backends.get(r.get::<_, &str>(0)))
            .ok_or_else(|| {
                Error::Integrity(format!("no configured backend holds {address} (file {id})"))
            })?;
        let body = match backend.get(&address, range).await {
            Ok(body) => body,
            // The database says the bytes are there: their absence is our fault, not the
            // caller's, and must not read as "no such file".
            Err(Error::NotFound { .. }) => {
                return Err(Error::Integrity(format!(
                    "backend `{}` has lost {address} (file {id})",
                    backend.id()
                )));
            }
            Err(e) => return Err(e),
        };
        // A whole file is checked against its digest as it streams; a range cannot be.
        let body = match range {
            None => verified(
                body,
                file.blake3,
                file.size,
                format!("{address} on `{}`", backend.id()),
            ),
            Some(_) => body,
        };
        Ok(FileDownload { file, range, body })
    }
}

/// Passes the bytes through while a hashing thread digests them (so hashing overlaps sending).
/// The last chunk is held back until the whole stream has hashed to `expected`, so a client
/// never receives a complete corrupt body: on a mismatch the stream fails instead, and the
/// server aborts the connection.
fn verified(body: ByteStream, expected: Digest, size: u64, what: String) -> ByteStream {
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
            if digest != expected || s.seen != size {
                tracing::error!(
                    blob = %what,
                    observed = %digest.to_hex(),
                    observed_size = s.seen,
                    "stored bytes do not match their digest; download aborted"
                );
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stored bytes failed their digest check",
                ));
            }
            Ok(s.held.take().map(|last| (last, s)))
        }
    });
    checked.boxed()
}

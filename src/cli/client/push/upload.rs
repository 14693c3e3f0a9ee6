//! Sending `push`'s files: raw PUTs, upload sessions in chunks, links to held bytes; each
//! retried as the server's answers allow.

use super::super::api::CliError;
use super::tree::{LocalFile, MediaTypes};
use artifactstore_client::{Store, StoreError, types};
use futures::StreamExt;
use indicatif::ProgressBar;
use std::sync::Arc;

/// Sends one package's files.
pub(super) struct Uploader {
    pub store: Store,
    pub package: uuid::Uuid,
    pub bar: ProgressBar,
    /// Files at least this large go by session.
    pub threshold: u64,
    /// Session chunk size.
    pub chunk: u64,
    pub media: MediaTypes,
}

/// A failure about one file, as the CLI reports it.
fn about(file: &LocalFile, e: StoreError) -> CliError {
    let e = CliError::from(e);
    CliError {
        message: format!("{}: {}", file.path, e.message),
        ..e
    }
}

/// Tries of one request in a row before giving up: with [`StoreError::retry_wait`], more than
/// the 30 s a completion (or 10 s a chunk) of a server that died holds a session.
const TRIES: u32 = 12;

impl Uploader {
    pub async fn upload(&self, file: &LocalFile) -> Result<(), CliError> {
        if file.size >= self.threshold {
            return self.upload_session(file).await;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let handle = tokio::fs::File::open(&file.full)
                .await
                .map_err(|e| CliError::other(format!("{}: {e}", file.full.display())))?;
            let bar = self.bar.clone();
            let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = sent.clone();
            // (The bytes hashed: a file grown since is cut there, and its digest refused.)
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::io::AsyncReadExt::take(handle, file.size),
                256 * 1024,
            )
            .inspect(move |c| {
                if let Ok(c) = c {
                    bar.inc(c.len() as u64);
                    counter.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let digest = format!("blake3:{}", file.blake3);
            let put = self
                .store
                .api()
                .put_file()
                .id(self.package)
                .relative_path(file.path.as_str())
                .expected_digest(digest)
                .media_type(self.media.of(&file.path))
                .body(artifactstore_client::sized_body(stream, file.size))
                .send();
            match self.store.call(put).await {
                Ok(_) => return Ok(()),
                // A try after one whose answer was lost: the file may be there already.
                Err(e) if attempt > 1 && e.status() == Some(409) && self.holds(file).await => {
                    return Ok(());
                }
                // Transport failures and server unavailability are worth another try.
                Err(e) if attempt < TRIES && e.is_retriable() => {
                    self.bar
                        .dec(sent.load(std::sync::atomic::Ordering::Relaxed));
                    tokio::time::sleep(e.retry_wait(attempt)).await;
                }
                Err(e) => return Err(about(file, e)),
            }
        }
    }

    async fn upload_session(&self, file: &LocalFile) -> Result<(), CliError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let invalid = |e: &dyn std::fmt::Display| CliError::other(format!("{}: {e}", file.path));
        let new = types::CreateUpload {
            package_id: self.package,
            relative_path: file.path.as_str().parse().map_err(|e| invalid(&e))?,
            size: Some(file.size),
            expected_digest: Some(
                format!("blake3:{}", file.blake3)
                    .parse()
                    .map_err(|e| invalid(&e))?,
            ),
            media_type: Some(self.media.of(&file.path).parse().map_err(|e| invalid(&e))?),
            replace: None,
        };
        let mut attempt = 0;
        let session = loop {
            attempt += 1;
            match self
                .store
                .call(self.store.api().create_upload().body(new.clone()).send())
                .await
            {
                Ok(session) => break session,
                // (A session whose answer was lost expires unused.)
                Err(e) if attempt < TRIES && e.is_retriable() => {
                    tokio::time::sleep(e.retry_wait(attempt)).await;
                }
                Err(e) => return Err(about(file, e)),
            }
        };
        let mut offset = 0u64;
        let mut failures = 0;
        while offset < file.size {
            let len = self.chunk.min(file.size - offset);
            let mut handle = tokio::fs::File::open(&file.full)
                .await
                .map_err(|e| CliError::other(format!("{}: {e}", file.full.display())))?;
            handle
                .seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| CliError::other(e.to_string()))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(handle.take(len), 256 * 1024);
            let range = format!("bytes {offset}-{}/{}", offset + len - 1, file.size)
                .parse::<artifactstore_client::types::AppendUploadContentRange>()
                .map_err(|e| invalid(&e))?;
            let chunk = self
                .store
                .api()
                .append_upload()
                .id(session.id)
                .content_range(range)
                .body(artifactstore_client::sized_body(stream, len))
                .send();
            match self.store.call(chunk).await {
                Ok(_) => {
                    offset += len;
                    self.bar.inc(len);
                    failures = 0;
                }
                // What may pass, and what says the session is elsewhere than this chunk thought
                // (416: another offset; 429: busy). Not what will not change (400, 409, 413).
                Err(e) if failures < TRIES && (e.is_retriable() || e.status() == Some(416)) => {
                    // Resume from what the server holds (behind a load balancer, maybe another
                    // server: one that died mid-chunk holds the session for up to 10 s).
                    failures += 1;
                    tokio::time::sleep(e.retry_wait(failures)).await;
                    // (Not known now: the next chunk is refused with the offset, or asks again.)
                    let Ok(state) = self
                        .store
                        .call(self.store.api().get_upload().id(session.id).send())
                        .await
                    else {
                        continue;
                    };
                    let held = state.offset;
                    if held > offset {
                        self.bar.inc(held - offset);
                    }
                    offset = held;
                }
                Err(e) => return Err(about(file, e)),
            }
        }
        self.complete_session(session.id, file).await
    }

    /// Whether the package holds `file` already (its path, with its bytes).
    async fn holds(&self, file: &LocalFile) -> bool {
        let Ok(package) = self
            .store
            .call(self.store.api().get_package().id(self.package).send())
            .await
        else {
            return false;
        };
        package
            .files
            .iter()
            .any(|f| f.relative_path == file.path.as_str() && f.digests.blake3 == file.blake3)
    }

    /// Completes a session, again on what may pass: the server unreachable or busy (a chunk
    /// or a completion of a server that died still holds the session), or unavailable (503).
    async fn complete_session(
        &self,
        session: uuid::Uuid,
        file: &LocalFile,
    ) -> Result<(), CliError> {
        let mut attempt = 0;
        loop {
            match self
                .store
                .call(self.store.api().complete_upload().id(session).send())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < TRIES && e.is_retriable() => {
                    attempt += 1;
                    tokio::time::sleep(e.retry_wait(attempt)).await;
                }
                // A completion whose answer was lost (the session is gone: 404), or one still
                // running when the tries ran out: the file may be there.
                Err(_) if attempt > 0 && self.holds(file).await => return Ok(()),
                Err(e) => return Err(about(file, e)),
            }
        }
    }

    pub async fn link_batch<'a>(
        &self,
        files: impl Iterator<Item = &'a LocalFile>,
    ) -> Result<(), CliError> {
        let (mut links, mut bytes) = (Vec::new(), 0);
        for file in files {
            let invalid =
                |e: &dyn std::fmt::Display| CliError::other(format!("{}: {e}", file.path));
            links.push(types::LinkFile {
                relative_path: file.path.as_str().parse().map_err(|e| invalid(&e))?,
                content_address: format!("blake3:{}", file.blake3)
                    .parse()
                    .map_err(|e| invalid(&e))?,
                media_type: Some(self.media.of(&file.path).parse().map_err(|e| invalid(&e))?),
                replace: None,
            });
            bytes += file.size;
        }
        let request = types::LinkFiles { links };
        self.store
            .call(
                self.store
                    .api()
                    .link_files()
                    .id(self.package)
                    .body(request.clone())
                    .send(),
            )
            .await?;
        self.bar.inc(bytes);
        Ok(())
    }
}

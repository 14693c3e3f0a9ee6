//! Every backend operation counted and timed
//! ([`BACKEND_OPERATIONS`](crate::metrics::BACKEND_OPERATIONS),
//! [`BACKEND_DURATION`](crate::metrics::BACKEND_DURATION)), whatever the backend: [`Measured`]
//! wraps a [`BlobStore`] and passes every call through, the conveniences a backend overrides
//! included, so wrapping changes no behaviour; an upload session's staging in pieces
//! ([`PiecedStaging`](super::PiecedStaging)) is measured the same way.

use super::{
    BackendHealth, BlobInfo, BlobStore, ByteRange, ByteStream, Capabilities, CommitOutcome,
    StagedBlob, WriteHint,
};
use crate::error::Result;
use crate::identity::{ContentAddress, Digest};
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Instant;

/// A backend whose operations are measured.
#[derive(Debug)]
pub struct Measured {
    inner: Arc<dyn BlobStore>,
    /// The label: the backend's id, owned once.
    id: Arc<str>,
}

impl Measured {
    /// `store`, measured.
    pub fn wrap(store: Arc<dyn BlobStore>) -> Arc<dyn BlobStore> {
        let id = Arc::from(store.id());
        Arc::new(Measured { inner: store, id })
    }
}

/// Counts and times one operation.
fn record<T>(id: &Arc<str>, operation: &'static str, started: Instant, result: &Result<T>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(crate::Error::NotFound { .. }) => "not_found",
        Err(_) => "error",
    };
    metrics::counter!(
        crate::metrics::BACKEND_OPERATIONS,
        "backend" => id.to_string(),
        "operation" => operation,
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(
        crate::metrics::BACKEND_DURATION,
        "backend" => id.to_string(),
        "operation" => operation
    )
    .record(started.elapsed().as_secs_f64());
}

async fn measure<T>(
    id: &Arc<str>,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        target: crate::telemetry::SPANS,
        "backend",
        otel.name = format!("backend {operation}"),
        otel.kind = "client",
        backend = %id,
        operation,
    );
    let started = Instant::now();
    let result = call.instrument(span).await;
    record(id, operation, started, &result);
    result
}

#[async_trait::async_trait]
impl BlobStore for Measured {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn stage(&self) -> Result<Box<dyn StagedBlob>> {
        let staged = measure(&self.id, "stage", self.inner.stage()).await?;
        Ok(self.staged(staged))
    }
    async fn get(&self, address: &ContentAddress, range: Option<ByteRange>) -> Result<ByteStream> {
        measure(&self.id, "get", self.inner.get(address, range)).await
    }
    async fn head(&self, address: &ContentAddress) -> Result<Option<u64>> {
        measure(&self.id, "head", self.inner.head(address)).await
    }
    async fn delete(&self, address: &ContentAddress) -> Result<()> {
        measure(&self.id, "delete", self.inner.delete(address)).await
    }
    fn list(&self) -> BoxStream<'static, Result<BlobInfo>> {
        metrics::counter!(
            crate::metrics::BACKEND_OPERATIONS,
            "backend" => self.id.to_string(),
            "operation" => "list",
            "outcome" => "started"
        )
        .increment(1);
        self.inner.list()
    }
    async fn health(&self) -> BackendHealth {
        let started = Instant::now();
        let health = self.inner.health().await;
        let result = if health.healthy {
            Ok(())
        } else {
            Err(crate::Error::storage(&self.id, "unreachable"))
        };
        record(&self.id, "health", started, &result);
        health
    }
    async fn sweep_staging(&self, cutoff: std::time::SystemTime) -> Result<usize> {
        measure(&self.id, "sweep", self.inner.sweep_staging(cutoff)).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn pieces(&self) -> Option<Arc<dyn super::PiecedStaging>> {
        let inner = self.inner.pieces()?;
        Some(Arc::new(MeasuredPieces {
            inner,
            id: self.id.clone(),
        }))
    }
    async fn stage_with(&self, hint: WriteHint) -> Result<Box<dyn StagedBlob>> {
        let staged = measure(&self.id, "stage", self.inner.stage_with(hint)).await?;
        Ok(self.staged(staged))
    }
    async fn get_checked(
        &self,
        address: &ContentAddress,
        expected: Digest,
        size: u64,
    ) -> Result<ByteStream> {
        measure(
            &self.id,
            "get",
            self.inner.get_checked(address, expected, size),
        )
        .await
    }
    async fn read_digest(&self, address: &ContentAddress) -> Result<(Digest, u64)> {
        measure(&self.id, "read_digest", self.inner.read_digest(address)).await
    }
    async fn free_bytes(&self) -> Option<u64> {
        self.inner.free_bytes().await
    }
    async fn adopts_in_place(&self, path: &std::path::Path) -> bool {
        self.inner.adopts_in_place(path).await
    }
    async fn adopt_file(
        &self,
        path: &std::path::Path,
        address: &ContentAddress,
    ) -> Result<CommitOutcome> {
        measure(&self.id, "adopt", self.inner.adopt_file(path, address)).await
    }
}

impl Measured {
    fn staged(&self, inner: Box<dyn StagedBlob>) -> Box<dyn StagedBlob> {
        Box::new(MeasuredStaged {
            inner,
            id: self.id.clone(),
        })
    }
}

/// A staged write whose completion (`commit`, `abort`) is measured; chunk writes are not
/// counted one by one (their time shows in the commit of a backend that sends at the end, and
/// in the request durations).
struct MeasuredStaged {
    inner: Box<dyn StagedBlob>,
    id: Arc<str>,
}

#[async_trait::async_trait]
impl StagedBlob for MeasuredStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.inner.write(chunk).await
    }
    fn written(&self) -> u64 {
        self.inner.written()
    }
    async fn prepare(&mut self, address: &ContentAddress) -> Result<()> {
        measure(&self.id, "prepare", self.inner.prepare(address)).await
    }
    async fn commit(self: Box<Self>, address: &ContentAddress) -> Result<CommitOutcome> {
        let MeasuredStaged { inner, id } = *self;
        measure(&id, "commit", inner.commit(address)).await
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        let MeasuredStaged { inner, id } = *self;
        measure(&id, "abort", inner.abort()).await
    }
}

/// An upload session's staging in pieces, each call measured as `piece_<call>` (a piece
/// stored is `piece_put`, one per part sent to S3).
struct MeasuredPieces {
    inner: Arc<dyn super::PiecedStaging>,
    id: Arc<str>,
}

#[async_trait::async_trait]
impl super::PiecedStaging for MeasuredPieces {
    fn sizes(&self) -> super::PieceSizes {
        self.inner.sizes()
    }
    async fn begin(&self, session: uuid::Uuid) -> Result<String> {
        measure(&self.id, "piece_begin", self.inner.begin(session)).await
    }
    async fn put(&self, token: &str, number: u32, bytes: Bytes) -> Result<String> {
        measure(&self.id, "piece_put", self.inner.put(token, number, bytes)).await
    }
    async fn join(&self, token: &str, pieces: Vec<(u32, String)>, size: u64) -> Result<()> {
        measure(&self.id, "piece_join", self.inner.join(token, pieces, size)).await
    }
    async fn read(&self, token: &str) -> Result<ByteStream> {
        measure(&self.id, "piece_read", self.inner.read(token)).await
    }
    async fn commit(
        &self,
        token: &str,
        address: &ContentAddress,
        size: u64,
    ) -> Result<CommitOutcome> {
        measure(
            &self.id,
            "piece_commit",
            self.inner.commit(token, address, size),
        )
        .await
    }
    async fn abort(&self, token: &str) -> Result<()> {
        measure(&self.id, "piece_abort", self.inner.abort(token)).await
    }
    async fn stages(&self) -> Result<Vec<(uuid::Uuid, String)>> {
        measure(&self.id, "piece_stages", self.inner.stages()).await
    }
}

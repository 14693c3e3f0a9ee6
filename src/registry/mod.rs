//! The orchestrator: packages, files, ingest, finalize, reads. Every public function takes the
//! caller's tenant; another tenant's things are `NotFound`.

mod admission;
mod blob_lock;
mod checkpoints;
mod dedup;
mod finalize;
mod gc;
mod group_commit;
mod ingest;
pub mod log_copy;
mod log_verify;
mod packages;
mod quota;
mod reads;
mod record;
mod relocate;
mod removal;
mod retention;
mod retrievals;
mod roots;
pub(crate) mod shares;
mod space;
mod types;
mod uploads;
mod usage;
mod verify;

pub use checkpoints::{ChainLink, Checkpoint, PublicKey};
pub use dedup::{LinkRequest, MAX_LINK_BATCH, MAX_MISSING_QUERY};
pub use gc::{Collectable, Collected};
pub use ingest::{DEFAULT_MEDIA_TYPE, StagedFile};
pub use log_verify::{LogProblem, LogReport, verify_log};
pub use packages::{NewPackage, PackageFilter, PackagePage};
pub use quota::{Quota, QuotaUsage, Room, TenantQuota, Writing, quota_definition_lock};
pub use reads::FileDownload;
pub use relocate::{MigrateScope, MigrationItem, Moved};
pub use retention::{Expiry, MAX_CLASS_DURATION_SECONDS, RetentionClass};
pub use retrievals::{
    FLUSH_EVERY, Retrieval, RetrievalFilter, RetrievalKind, RetrievalLog, RetrievalSlot,
    StoredRetrieval,
};
pub use roots::MARKER_FILE;
pub use space::DiskSpace;
pub use types::{
    FileRecord, IfMatch, IngestRequest, Package, PackageStatus, Removal, RetentionInfo,
    StoredManifest,
};
pub use uploads::{Chunk, NewUpload, UploadSession};
#[doc(hidden)]
pub use usage::USAGE_SQL;
pub use usage::Usage;
pub use verify::{Location, VerifyOutcome, VerifyScope, VerifyTotals};

use crate::domain::{Clock, SystemClock};
use crate::storage::Backends;
use deadpool_postgres::Pool;
use std::sync::Arc;

/// Configurable limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted file, in bytes.
    pub max_file_size: u64,
    /// Most files one package may hold.
    pub max_files_per_package: u64,
    /// How long an upload session lives without being completed.
    pub upload_ttl_seconds: u64,
    /// Upload chunks that may stream into a backend that stages them in pieces (S3) at once,
    /// in this process: each holds up to
    /// [`PieceSizes::in_flight`](crate::storage::PieceSizes) + 1 pieces in memory. A tenant
    /// takes at most half; beyond that a chunk waits up to 30 s, then is refused as busy.
    pub max_streaming_chunks: usize,
    /// Open upload sessions a tenant may have when its quota does not say.
    pub default_max_upload_sessions: u64,
    /// Tasks recording small ingests in batches (group commit) in this process: while one
    /// batch commits, the next takes its locks. Fewer make larger batches; several servers on
    /// one database each run their own.
    pub group_committers: usize,
    /// Free bytes a local backend's filesystem (and the upload spools') must keep: below it,
    /// new writes are refused (`InsufficientStorage`); reads, finalize and deletes go on.
    pub min_free_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 5 << 30,
            max_files_per_package: 10_000,
            upload_ttl_seconds: 24 * 3600,
            max_streaming_chunks: 16,
            default_max_upload_sessions: 1000,
            min_free_bytes: 0,
            group_committers: 2,
        }
    }
}

/// The registry: PostgreSQL for state, backends for bytes.
#[derive(Clone)]
pub struct Registry {
    pool: Pool,
    backends: Backends,
    clock: Arc<dyn Clock>,
    limits: Limits,
    upload_dir: std::path::PathBuf,
    /// Upload sessions' hashing state in this process. Lost on restart (or when another
    /// process takes a chunk), in which case completion reads the kept bytes again.
    live_uploads: uploads::LiveUploads,
    /// Bounds the upload chunks streaming into a backend's pieces at once.
    streaming_chunks: Arc<uploads::StreamingSlots>,
    /// Records small ingests in batches (group commit).
    committer: group_commit::Committer,
    /// Numbers the events this process commits (and any left unnumbered).
    sequencer: crate::events::Sequencer,
    /// Signs packages' attestations at finalize (a server's key; none in tools and tests that
    /// build a registry of their own).
    signer: Option<Arc<crate::signing::SigningKey>>,
}

impl Registry {
    /// A registry with the system clock and default limits.
    pub fn new(pool: Pool, backends: Backends) -> Self {
        Registry {
            sequencer: crate::events::Sequencer::new(pool.clone()),
            pool,
            backends,
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            upload_dir: std::env::temp_dir().join("artifactstore-uploads"),
            live_uploads: Arc::default(),
            streaming_chunks: Arc::new(uploads::StreamingSlots::new(
                Limits::default().max_streaming_chunks,
            )),
            committer: group_commit::Committer::default(),
            signer: None,
        }
    }

    /// Signs an attestation of every package finalized from now on with `key`.
    pub fn with_signer(mut self, key: Arc<crate::signing::SigningKey>) -> Self {
        self.signer = Some(key);
        self
    }

    /// Where upload sessions spool their bytes (local disk).
    pub fn with_upload_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.upload_dir = dir.into();
        self
    }

    /// The registry's clock's time.
    pub fn now(&self) -> crate::domain::Timestamp {
        self.clock.now()
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.streaming_chunks = Arc::new(uploads::StreamingSlots::new(limits.max_streaming_chunks));
        self
    }

    /// The process's event sequencer (a server or worker [starts](crate::events::Sequencer::start)
    /// it, so that it also numbers events that a dead process left unnumbered).
    pub fn sequencer(&self) -> &crate::events::Sequencer {
        &self.sequencer
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The storage backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Small ingests recorded by group commit so far in this process: (transactions, files).
    pub fn group_commit_stats(&self) -> (u64, u64) {
        self.committer.stats()
    }
}

//! Retrieval records: who read what (downloads, manifest reads, package reads), how much, with
//! what outcome, when, from where. Reads must stay fast and take no sequence numbers, so the
//! records are not events: a request hands its record to a [`RetrievalLog`], whose writer
//! inserts them in batches at least every [`FLUSH_EVERY`]. The queue is bounded: when the
//! database falls behind, reads wait for room rather than go unrecorded (a download takes its
//! place before it starts, and fills it when its bytes have gone).

use super::Registry;
use super::shares::TenantShares;
use crate::domain::{FileId, PackageId, TenantId, Timestamp};
use crate::error::{Error, Result};
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest a record waits in the queue before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Most records one insert writes.
const BATCH: usize = 1000;

/// What was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrievalKind {
    /// A package's record (`GET /packages/{id}`).
    Package,
    /// A manifest (CBOR or JSON).
    Manifest,
    /// A file's bytes (or a range of them).
    File,
}

impl RetrievalKind {
    /// Its name in records.
    pub fn as_str(self) -> &'static str {
        match self {
            RetrievalKind::Package => "package",
            RetrievalKind::Manifest => "manifest",
            RetrievalKind::File => "file",
        }
    }
}

/// One read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrieval {
    /// Whose data.
    pub tenant: TenantId,
    /// The token's name.
    pub token_name: String,
    /// What was read.
    pub what: RetrievalKind,
    /// The package.
    pub package_id: Option<PackageId>,
    /// The file, for file reads.
    pub file_id: Option<FileId>,
    /// The byte range asked for and served (`[start, end]`), if not the whole file.
    pub range: Option<(u64, u64)>,
    /// Bytes sent.
    pub bytes_served: u64,
    /// The HTTP status answered.
    pub status: u16,
    /// `complete`, `aborted` (the client went away, or the bytes failed, mid-way),
    /// `not_modified`, `unsatisfiable` or `head`.
    pub outcome: &'static str,
    /// When the read started.
    pub at: Timestamp,
    /// The client's address.
    pub client_addr: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
}

/// Where requests hand their records; clones share one writer. [`off`](Self::off) keeps
/// none (an operator who keeps retrieval records 0 days).
#[derive(Debug, Clone)]
pub struct RetrievalLog {
    queue: Option<mpsc::Sender<Queued>>,
    /// Each tenant's share of the queue's places (half, and a reserve for tenants holding
    /// none), so that no tenant's slow downloads, each holding its place until its body
    /// ends, can stall another's.
    shares: Arc<TenantShares>,
    /// How long a read waits for a place before it is refused as busy.
    patience: Duration,
}

/// How long a read waits for a place in the queue.
const PATIENCE: Duration = Duration::from_secs(10);

impl RetrievalLog {
    /// Starts the writer (a task on the current runtime) with a queue of `capacity` records.
    /// It ends once every clone of the log is dropped and the queue is written.
    pub fn start(pool: Pool, capacity: usize) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start_with(pool, capacity, PATIENCE)
    }

    /// [`Self::start`], a read waiting up to `patience` for a place.
    pub fn start_with(
        pool: Pool,
        capacity: usize,
        patience: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let capacity = capacity.max(1);
        let (queue, records) = mpsc::channel(capacity);
        let writer = tokio::spawn(write_records(pool, records));
        let log = RetrievalLog {
            queue: Some(queue),
            shares: Arc::new(TenantShares::of(capacity)),
            patience,
        };
        (log, writer)
    }

    /// A log that records nothing.
    pub fn off() -> Self {
        tracing::info!("retrieval records are off (kept 0 days): none are written");
        RetrievalLog {
            queue: None,
            shares: Arc::new(TenantShares::of(1)),
            patience: PATIENCE,
        }
    }

    /// Queues a record; see [`Self::reserve`] for when it cannot.
    pub async fn record(&self, retrieval: Retrieval) -> Result<()> {
        if let Some(slot) = self.reserve(&retrieval.tenant).await? {
            slot.record(retrieval);
        }
        Ok(())
    }

    /// A place in the queue for one of `tenant`'s reads, taken now, for a record made later
    /// where nothing can wait: when a response body ends or is dropped. A tenant holds at
    /// most half the places, and a quarter are kept for tenants holding none
    /// ([`TenantShares`]); a read waits for one up to a bound (the writer behind, or the
    /// tenant's share in use), then is refused as busy (429): reads are never served
    /// unrecorded. `None` when the log is off (or closed).
    pub async fn reserve(&self, tenant: &TenantId) -> Result<Option<RetrievalSlot>> {
        let Some(queue) = &self.queue else {
            return Ok(None);
        };
        let taken = tokio::time::timeout(self.patience, async {
            let share = self.shares.take(tenant.as_str()).await;
            let place = queue.clone().reserve_owned().await.ok()?;
            Some(RetrievalSlot { place, share })
        })
        .await;
        match taken {
            Ok(Some(slot)) => Ok(Some(slot)),
            Ok(None) => {
                tracing::error!("the retrieval log is closed: a record will be lost");
                Ok(None)
            }
            Err(_) => Err(Error::Busy(
                "too many reads are waiting to be recorded (this tenant's share of the \
                 retrieval queue is in use, or the writer is behind); retry shortly"
                    .into(),
            )),
        }
    }
}

/// A reserved place in the retrieval queue ([`RetrievalLog::reserve`]), and the place it
/// takes in its tenant's share until the writer takes its record from the queue: every place
/// of the queue, reserved or holding a record, is then some tenant's share, so that a
/// tenant's records waiting for a writer that is behind count against its share, not
/// against other tenants'.
#[derive(Debug)]
pub struct RetrievalSlot {
    place: mpsc::OwnedPermit<Queued>,
    share: super::shares::Share,
}

/// A record in the queue, holding its tenant's share until the writer takes it.
#[derive(Debug)]
pub(crate) struct Queued {
    retrieval: Retrieval,
    _share: super::shares::Share,
}

impl RetrievalSlot {
    /// Queues the record in the place reserved for it, at once.
    pub fn record(self, retrieval: Retrieval) {
        self.place.send(Queued {
            retrieval,
            _share: self.share,
        });
    }
}

/// Writes queued records in batches until the queue closes; a failed insert is retried
/// (doubling waits up to 5 s) with the batch kept, so nothing is lost while the database is
/// away; after the queue closed, a batch that still fails after a few tries is logged as lost.
async fn write_records(pool: Pool, mut records: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = records.recv().await else {
            return;
        };
        batch.push(first.retrieval);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, records.recv()).await {
                Ok(Some(record)) => batch.push(record.retrieval),
                Ok(None) | Err(_) => break,
            }
        }
        let mut wait = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match insert(&pool, &batch).await {
                Ok(()) => break,
                Err(e) if records.is_closed() && tries >= 5 => {
                    tracing::error!(error = %e, records = batch.len(), "retrieval records lost at shutdown");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = batch.len(), "writing retrieval records failed; retrying");
                    tries += 1;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}

async fn insert(pool: &Pool, batch: &[Retrieval]) -> Result<()> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO retrieval_records (tenant, token_name, what, package_id, file_id, \
                 range_start, range_end, bytes_served, status, outcome, at, client_addr, \
                 request_id) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], \
                 $6::bigint[], $7::bigint[], $8::bigint[], $9::smallint[], $10::text[], \
                 $11::timestamptz[], $12::text[], $13::text[])",
        )
        .await?;
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let tenant: Vec<&str> = batch.iter().map(|r| r.tenant.as_str()).collect();
    let token: Vec<&str> = batch.iter().map(|r| r.token_name.as_str()).collect();
    let what: Vec<&str> = batch.iter().map(|r| r.what.as_str()).collect();
    let package: Vec<Option<uuid::Uuid>> =
        batch.iter().map(|r| r.package_id.map(|p| p.0)).collect();
    let file: Vec<Option<uuid::Uuid>> = batch.iter().map(|r| r.file_id.map(|f| f.0)).collect();
    let start: Vec<Option<i64>> = batch.iter().map(|r| r.range.map(|(s, _)| int(s))).collect();
    let end: Vec<Option<i64>> = batch.iter().map(|r| r.range.map(|(_, e)| int(e))).collect();
    let bytes: Vec<i64> = batch.iter().map(|r| int(r.bytes_served)).collect();
    let status: Vec<i16> = batch.iter().map(|r| r.status as i16).collect();
    let outcome: Vec<&str> = batch.iter().map(|r| r.outcome).collect();
    let at: Vec<time::OffsetDateTime> = batch.iter().map(|r| r.at.as_datetime()).collect();
    let addr: Vec<Option<&str>> = batch.iter().map(|r| r.client_addr.as_deref()).collect();
    let request: Vec<Option<&str>> = batch.iter().map(|r| r.request_id.as_deref()).collect();
    client
        .execute(
            &statement,
            &[
                &tenant, &token, &what, &package, &file, &start, &end, &bytes, &status, &outcome,
                &at, &addr, &request,
            ],
        )
        .await?;
    Ok(())
}

/// Which records a listing wants.
#[derive(Debug, Clone, Default)]
pub struct RetrievalFilter {
    /// Only reads of this package.
    pub package_id: Option<PackageId>,
    /// Only reads of this file.
    pub file_id: Option<FileId>,
    /// Only reads at or after this time.
    pub since: Option<Timestamp>,
    /// At most this many (1-1000).
    pub limit: i64,
    /// After this record (the previous page's last).
    pub after: Option<i64>,
}

/// A record as stored: its id orders the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRetrieval {
    /// Position in the tenant's records.
    pub id: i64,
    /// The record.
    pub retrieval: Retrieval,
}

impl Registry {
    /// A tenant's retrieval records, oldest first, `filter.limit` at most.
    pub async fn retrievals(
        &self,
        tenant: &TenantId,
        filter: &RetrievalFilter,
    ) -> Result<Vec<StoredRetrieval>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, tenant, token_name, what, package_id, file_id, range_start, \
                        range_end, bytes_served, status, outcome, at, client_addr, request_id \
                 FROM retrieval_records \
                 WHERE tenant = $1 AND id > $2 \
                   AND ($3::uuid IS NULL OR package_id = $3) \
                   AND ($4::uuid IS NULL OR file_id = $4) \
                   AND ($5::timestamptz IS NULL OR at >= $5) \
                 ORDER BY id LIMIT $6",
                &[
                    &tenant.as_str(),
                    &filter.after.unwrap_or(0),
                    &filter.package_id.map(|p| p.0),
                    &filter.file_id.map(|f| f.0),
                    &filter.since.map(|t| t.as_datetime()),
                    &filter.limit.clamp(1, 1000),
                ],
            )
            .await?;
        rows.iter().map(stored).collect()
    }

    /// Deletes records older than `before`, at most `batch` (oldest first); how many went.
    pub async fn prune_retrievals(&self, before: Timestamp, batch: i64) -> Result<u64> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM retrieval_records WHERE id IN ( \
                   SELECT id FROM retrieval_records WHERE at < $1 ORDER BY at LIMIT $2)",
                &[&before.as_datetime(), &batch],
            )
            .await?)
    }
}

fn stored(row: &tokio_postgres::Row) -> Result<StoredRetrieval> {
    let what = match row.get::<_, &str>(3) {
        "package" => RetrievalKind::Package,
        "manifest" => RetrievalKind::Manifest,
        "file" => RetrievalKind::File,
        other => return Err(Error::Integrity(format!("retrieval of `{other}`"))),
    };
    let outcome = match row.get::<_, &str>(10) {
        "complete" => "complete",
        "aborted" => "aborted",
        "not_modified" => "not_modified",
        "unsatisfiable" => "unsatisfiable",
        "head" => "head",
        other => return Err(Error::Integrity(format!("retrieval outcome `{other}`"))),
    };
    let range = match (row.get::<_, Option<i64>>(6), row.get::<_, Option<i64>>(7)) {
        (Some(start), Some(end)) => Some((start as u64, end as u64)),
        _ => None,
    };
    Ok(StoredRetrieval {
        id: row.get(0),
        retrieval: Retrieval {
            tenant: TenantId::new(row.get(1))?,
            token_name: row.get(2),
            what,
            package_id: row.get::<_, Option<uuid::Uuid>>(4).map(PackageId),
            file_id: row.get::<_, Option<uuid::Uuid>>(5).map(FileId),
            range,
            bytes_served: row.get::<_, i64>(8) as u64,
            status: row.get::<_, i16>(9) as u16,
            outcome,
            at: Timestamp::from_datetime(row.get(11)),
            client_addr: row.get(12),
            request_id: row.get(13),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_by(tenant: &TenantId) -> Retrieval {
        Retrieval {
            tenant: tenant.clone(),
            token_name: "t".into(),
            what: RetrievalKind::Package,
            package_id: None,
            file_id: None,
            range: None,
            bytes_served: 0,
            status: 200,
            outcome: "complete",
            at: Timestamp::parse("2026-12-07T00:00:00Z").unwrap(),
            client_addr: None,
            request_id: None,
        }
    }

    /// With the writer behind (its database unreachable), the records waiting in the queue
    /// hold their tenants' shares: two tenants reading until refused leave a tenant with no
    /// read in flight a place, where their waiting records used to fill the queue.
    #[tokio::test]
    async fn records_waiting_for_a_writer_behind_count_against_their_tenants_share() {
        let pool = crate::db::pool("postgres://nobody@127.0.0.1:9/nothing", 1).unwrap();
        let (log, writer) = RetrievalLog::start_with(pool, 8, Duration::from_millis(50));
        for tenant in ["a", "b"] {
            let tenant = TenantId::new(tenant).unwrap();
            let mut read = 0;
            loop {
                match log.reserve(&tenant).await {
                    Ok(Some(slot)) => slot.record(read_by(&tenant)),
                    Err(Error::Busy(_)) => break,
                    other => panic!("{other:?}"),
                }
                read += 1;
                assert!(read < 10 * BATCH, "the writer never fell behind");
            }
        }
        let c = TenantId::new("c").unwrap();
        assert!(
            matches!(log.reserve(&c).await, Ok(Some(_))),
            "c gets a place"
        );
        writer.abort();
    }
}

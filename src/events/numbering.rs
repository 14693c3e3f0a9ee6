//! A numbering pass's work, under `event_counter`'s row lock: chain (a bounded number of) the
//! numbered events that have no chain yet (numbered before the chain existed), then give every
//! committed unnumbered event the next number and, once the chain has caught up, its chain
//! ([`super::chain`]), in ticket order.

use super::chain::link;
use super::log::StoredEvent;
use crate::error::{Error, Result};
use tokio_postgres::{GenericClient, Row, Statement};

/// Most unnumbered events one statement reads (a pass repeats until none are left). Their
/// digests were stored by their writers: a row is a few dozen bytes.
const BATCH: i64 = 10_000;

/// Most events without a chain one pass chains (their digests may have to be computed from
/// their payloads, read back): a pass stays short however long the log it catches up on.
const CATCH_UP_PER_PASS: i64 = 20_000;
/// Of those, per statement.
const CATCH_UP_BATCH: i64 = 1_000;

/// Takes the counter's row lock: the last number given, the last one chained, its chain.
const LOCK_COUNTER: &str =
    "SELECT last_sequence, chained_through, last_chain FROM event_counter FOR UPDATE";

/// The columns a link is computed from: the stored digest, or (for an event written without
/// one) what it is computed from, the payload only then.
const LINK_COLUMNS: &str = "position, digest, id, type, tenant, subject_id, occurred_at, \
    CASE WHEN digest IS NULL THEN payload END AS payload";

/// Committed unnumbered events in the order they are numbered. A statement of its own after
/// the lock, so its snapshot sees every event committed before the lock was had.
fn pending_sql() -> String {
    format!(
        "SELECT {LINK_COLUMNS} FROM events WHERE sequence IS NULL \
         ORDER BY ticket, position LIMIT $1"
    )
}

/// Numbered events after `$1` up to `$3` (chained through `$1`), in order.
fn unchained_sql() -> String {
    format!(
        "SELECT sequence, {LINK_COLUMNS} FROM events WHERE sequence > $1 AND sequence <= $3 \
         ORDER BY sequence LIMIT $2"
    )
}

/// Sets events' numbers and chains (a chain may be NULL: set later), by position.
const SET: &str = "UPDATE events e SET sequence = u.sequence, chain = u.chain \
    FROM unnest($1::int8[], $2::int8[], $3::bytea[]) AS u(position, sequence, chain) \
    WHERE e.position = u.position";

const SAVE_COUNTER: &str =
    "UPDATE event_counter SET last_sequence = $1, chained_through = $2, last_chain = $3";

/// Whether a pass has anything to do (asked before the counter's lock is taken).
pub(super) const ANYTHING_TO_DO: &str = "SELECT EXISTS (SELECT 1 FROM events WHERE sequence IS NULL) \
    OR (SELECT chained_through < last_sequence FROM event_counter)";

/// The text of every statement a pass runs (see [`super::sequencer::pass_plans`]).
pub(super) fn pass_statements() -> Vec<String> {
    vec![
        ANYTHING_TO_DO.to_owned(),
        LOCK_COUNTER.to_owned(),
        unchained_sql(),
        pending_sql(),
        SET.to_owned(),
        SAVE_COUNTER.to_owned(),
    ]
}

/// The statements of a pass, prepared on its connection.
pub(super) struct Statements {
    lock: Statement,
    unchained: Statement,
    pending: Statement,
    set: Statement,
    save: Statement,
}

impl Statements {
    pub(super) async fn prepare(client: &impl GenericClient) -> Result<Self> {
        let (pending, unchained) = (pending_sql(), unchained_sql());
        let (lock, unchained, pending, set, save) = futures::try_join!(
            client.prepare(LOCK_COUNTER),
            client.prepare(&unchained),
            client.prepare(&pending),
            client.prepare(SET),
            client.prepare(SAVE_COUNTER)
        )?;
        Ok(Statements {
            lock,
            unchained,
            pending,
            set,
            save,
        })
    }
}

/// Where the counter stands.
struct Counter {
    last: i64,
    chained: i64,
    chain: [u8; 32],
}

/// An event's digest: the stored one, or computed from its contents.
fn digest_of(row: &Row, sequence: i64) -> Result<[u8; 32]> {
    if let Some(stored) = row.get::<_, Option<&[u8]>>("digest") {
        return <[u8; 32]>::try_from(stored)
            .map_err(|_| Error::Integrity("an event's digest is not 32 bytes".into()));
    }
    let event = StoredEvent {
        sequence,
        position: row.get("position"),
        id: row.get("id"),
        event_type: row.get("type"),
        tenant: crate::domain::TenantId::new(row.get("tenant"))?,
        subject_id: row.get("subject_id"),
        occurred_at: crate::domain::Timestamp::from_datetime(row.get("occurred_at")),
        payload: bytes::Bytes::from(row.get::<_, Vec<u8>>("payload")),
        chain: None,
    };
    Ok(super::chain::digest(&event))
}

/// What one [`SET`] writes.
#[derive(Default)]
struct Links {
    positions: Vec<i64>,
    sequences: Vec<i64>,
    chains: Vec<Option<Vec<u8>>>,
}

impl Links {
    fn push(&mut self, position: i64, sequence: i64, chain: Option<[u8; 32]>) {
        self.positions.push(position);
        self.sequences.push(sequence);
        self.chains.push(chain.map(|c| c.to_vec()));
    }

    async fn write(&self, tx: &impl GenericClient, set: &Statement) -> Result<()> {
        if !self.positions.is_empty() {
            tx.execute(set, &[&self.positions, &self.sequences, &self.chains])
                .await?;
        }
        Ok(())
    }
}

/// Who ends a numbering pass's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The caller, after [`number`] returns.
    Caller,
    /// [`number`] sends COMMIT with its last writes (one round trip), when it wrote anything:
    /// for a transaction begun with a plain BEGIN on a connection of the caller's own.
    CommitWithLastWrite,
}

/// Numbers every committed unnumbered event (chaining it too once the chain has caught up),
/// in a transaction that `end` says who ends; takes the counter's row lock, held until then.
/// Returns how many events it numbered, and whether it sent COMMIT (and it succeeded).
pub(super) async fn number(
    tx: &impl GenericClient,
    statements: &Statements,
    end: End,
) -> Result<(u64, bool)> {
    // Sent together, run in order: the first read of pending events starts once the lock is
    // had (and is the common case: every event before them is chained already).
    let (row, first) = futures::try_join!(
        tx.query_one(&statements.lock, &[]),
        tx.query(&statements.pending, &[&BATCH])
    )?;
    let mut counter = Counter {
        last: row.get(0),
        chained: row.get(1),
        chain: <[u8; 32]>::try_from(row.get::<_, &[u8]>(2))
            .map_err(|_| Error::Integrity("event_counter.last_chain is not 32 bytes".into()))?,
    };
    let start = (counter.last, counter.chained);
    chain_numbered(tx, statements, &mut counter).await?;
    let mut total = 0u64;
    let mut rows = first;
    loop {
        let mut links = Links::default();
        for row in &rows {
            counter.last += 1;
            let chain = if counter.chained == counter.last - 1 {
                counter.chain = link(&counter.chain, counter.last, &digest_of(row, counter.last)?);
                counter.chained = counter.last;
                Some(counter.chain)
            } else {
                None
            };
            links.push(row.get("position"), counter.last, chain);
        }
        total += rows.len() as u64;
        if (rows.len() as i64) < BATCH {
            // Nothing numbered nor chained: nothing to write. Else the last numbers and the
            // counter (and COMMIT, if asked), sent together, run in order: after an error the
            // statements behind it fail too, and COMMIT in a failed transaction rolls it back.
            if (counter.last, counter.chained) == start {
                return Ok((total, false));
            }
            let chain = counter.chain.as_slice();
            let save: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&counter.last, &counter.chained, &chain];
            let commit = end == End::CommitWithLastWrite;
            futures::try_join!(
                links.write(tx, &statements.set),
                async { Ok(tx.execute(&statements.save, &save).await?) },
                async {
                    if commit {
                        tx.batch_execute("COMMIT").await?;
                    }
                    Ok::<_, Error>(())
                }
            )?;
            return Ok((total, commit));
        }
        links.write(tx, &statements.set).await?;
        rows = tx.query(&statements.pending, &[&BATCH]).await?;
    }
}

/// Chains up to [`CATCH_UP_PER_PASS`] numbered events after `counter.chained`, in order
/// (events numbered before the chain existed, or while a pass was catching up).
async fn chain_numbered(
    tx: &impl GenericClient,
    statements: &Statements,
    counter: &mut Counter,
) -> Result<()> {
    let until = counter.last.min(counter.chained + CATCH_UP_PER_PASS);
    while counter.chained < until {
        let rows = tx
            .query(
                &statements.unchained,
                &[&counter.chained, &CATCH_UP_BATCH, &until],
            )
            .await?;
        let mut links = Links::default();
        for row in &rows {
            let sequence: i64 = row.get("sequence");
            if sequence != counter.chained + 1 {
                return Err(Error::Integrity(format!(
                    "event {sequence} follows event {} in the log: it cannot be chained",
                    counter.chained
                )));
            }
            counter.chain = link(&counter.chain, sequence, &digest_of(row, sequence)?);
            counter.chained = sequence;
            links.push(row.get("position"), sequence, Some(counter.chain));
        }
        links.write(tx, &statements.set).await?;
        if rows.is_empty() {
            return Err(Error::Integrity(format!(
                "the counter has numbered {} events, the log ends at {}",
                counter.last, counter.chained
            )));
        }
    }
    Ok(())
}

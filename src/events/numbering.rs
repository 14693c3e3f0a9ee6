//! A numbering pass's work, under `event_counter`'s row lock: chain the numbered events that
//! have no chain yet (those numbered before the chain existed), then give every committed
//! unnumbered event the next number and its chain ([`super::chain`]), in ticket order.

use super::chain::{digest, link};
use super::log::StoredEvent;
use crate::error::{Error, Result};
use tokio_postgres::{GenericClient, Statement};

/// Most events one statement reads (a pass repeats until none are left).
const BATCH: i64 = 10_000;

/// Takes the counter's row lock: the last number given, the last one chained, its chain.
const LOCK_COUNTER: &str =
    "SELECT last_sequence, chained_through, last_chain FROM event_counter FOR UPDATE";

/// Numbered events after `$1` (chained through `$1`), in order: those still to chain.
const UNCHAINED: &str = "SELECT sequence, position, id, type, tenant, subject_id, occurred_at, \
    payload, chain FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2";

/// Committed unnumbered events in the order they are numbered. A statement of its own after
/// the lock, so its snapshot sees every event committed before the lock was had.
const PENDING: &str = "SELECT 0::int8 AS sequence, position, id, type, tenant, subject_id, \
    occurred_at, payload, chain FROM events WHERE sequence IS NULL \
    ORDER BY ticket, position LIMIT $1";

/// Sets events' numbers and chains, by position.
const SET: &str = "UPDATE events e SET sequence = u.sequence, chain = u.chain \
    FROM unnest($1::int8[], $2::int8[], $3::bytea[]) AS u(position, sequence, chain) \
    WHERE e.position = u.position";

const SAVE_COUNTER: &str =
    "UPDATE event_counter SET last_sequence = $1, chained_through = $2, last_chain = $3";

/// Whether a pass has anything to do (asked before the counter's lock is taken).
pub(super) const ANYTHING_TO_DO: &str = "SELECT EXISTS (SELECT 1 FROM events WHERE sequence IS NULL) \
    OR (SELECT chained_through < last_sequence FROM event_counter)";

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
        let (lock, unchained, pending, set, save) = futures::try_join!(
            client.prepare(LOCK_COUNTER),
            client.prepare(UNCHAINED),
            client.prepare(PENDING),
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

/// What one [`SET`] writes.
#[derive(Default)]
struct Links {
    positions: Vec<i64>,
    sequences: Vec<i64>,
    chains: Vec<Vec<u8>>,
}

impl Links {
    /// Links `event` (numbered) after `counter.chain`, and moves the counter's chain on.
    fn push(&mut self, counter: &mut Counter, event: &StoredEvent) {
        counter.chain = link(&counter.chain, &digest(event));
        self.positions.push(event.position);
        self.sequences.push(event.sequence);
        self.chains.push(counter.chain.to_vec());
    }

    async fn write(&self, tx: &impl GenericClient, set: &Statement) -> Result<()> {
        if !self.positions.is_empty() {
            tx.execute(set, &[&self.positions, &self.sequences, &self.chains])
                .await?;
        }
        Ok(())
    }
}

/// Numbers (and chains) every committed unnumbered event, in a transaction the caller ends;
/// takes the counter's row lock, held until then. Returns how many events it numbered.
pub(super) async fn number(tx: &impl GenericClient, statements: &Statements) -> Result<u64> {
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
    let (start_last, start_chained) = (counter.last, counter.chained);
    chain_numbered(tx, statements, &mut counter).await?;
    let mut total = 0u64;
    let mut rows = first;
    loop {
        let mut links = Links::default();
        for row in &rows {
            let mut event = StoredEvent::from_row(row)?;
            counter.last += 1;
            event.sequence = counter.last;
            links.push(&mut counter, &event);
        }
        links.write(tx, &statements.set).await?;
        total += rows.len() as u64;
        if (rows.len() as i64) < BATCH {
            break;
        }
        rows = tx.query(&statements.pending, &[&BATCH]).await?;
    }
    counter.chained = counter.last;
    if (counter.last, counter.chained) != (start_last, start_chained) {
        tx.execute(
            &statements.save,
            &[&counter.last, &counter.chained, &counter.chain.as_slice()],
        )
        .await?;
    }
    Ok(total)
}

/// Chains the numbered events after `counter.chained`, in order (events numbered before the
/// chain existed, or by a process that numbers without chaining).
async fn chain_numbered(
    tx: &impl GenericClient,
    statements: &Statements,
    counter: &mut Counter,
) -> Result<()> {
    while counter.chained < counter.last {
        let rows = tx
            .query(&statements.unchained, &[&counter.chained, &BATCH])
            .await?;
        let mut links = Links::default();
        for row in &rows {
            let event = StoredEvent::from_row(row)?;
            if event.sequence != counter.chained + 1 {
                return Err(Error::Integrity(format!(
                    "event {} follows event {} in the log: it cannot be chained",
                    event.sequence, counter.chained
                )));
            }
            if event.chain.is_some() {
                return Err(Error::Integrity(format!(
                    "event {} is chained, but the counter says the chain ends at {}",
                    event.sequence, counter.chained
                )));
            }
            links.push(counter, &event);
            counter.chained = event.sequence;
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

//! Signed checkpoints of the event log and the public keys that signed them.
//!
//! A checkpoint says: through event `sequence`, the log's chain was `chain`
//! ([`crate::events::chain`]). It is signed (Ed25519) over its canonical text:
//!
//! ```text
//! artifactstore log checkpoint v1
//! sequence <sequence, decimal>
//! chain <chain, 64 lowercase hex>
//! time <made_at, RFC 3339 UTC with microseconds, as the API writes times>
//! ```
//!
//! (four lines, each ending in `\n`). Anyone holding a checkpoint and the public key can later
//! tell whether the log up to it is the log that was signed.

use super::Registry;
use crate::domain::Timestamp;
use crate::error::{Error, Result};
use crate::signing::SigningKey;

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The last event it covers.
    pub sequence: i64,
    /// The chain through that event, lowercase hex.
    pub chain: String,
    /// When it was made.
    pub time: Timestamp,
    /// The signing key's id ([`crate::signing::key_id`]).
    pub key_id: String,
    /// Ed25519 signature of [`Checkpoint::signed_text`], lowercase hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn signed_text(&self) -> String {
        signed_text(self.sequence, &self.chain, &self.time)
    }
}

fn signed_text(sequence: i64, chain_hex: &str, time: &Timestamp) -> String {
    format!(
        "artifactstore log checkpoint v1\nsequence {sequence}\nchain {chain_hex}\ntime {time}\n"
    )
}

/// A public key the store has signed with.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// Its id.
    pub key_id: String,
    /// Raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// When it was first used here.
    pub first_used: Timestamp,
}

fn checkpoint_of(row: &tokio_postgres::Row) -> Checkpoint {
    Checkpoint {
        sequence: row.get(0),
        chain: hex::encode(row.get::<_, &[u8]>(1)),
        time: Timestamp::from_datetime(row.get(2)),
        key_id: row.get(3),
        signature: hex::encode(row.get::<_, &[u8]>(4)),
    }
}

const CHECKPOINT_COLUMNS: &str = "sequence, chain, made_at, key_id, signature";

/// One link of the chain as anyone may see it: an event's number, digest and chain, nothing
/// of its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// The event's number.
    pub sequence: i64,
    /// BLAKE3 of its canonical CBOR without its number.
    pub digest: [u8; 32],
    /// The chain through it (`None` while not chained yet).
    pub chain: Option<[u8; 32]>,
}

impl Registry {
    /// Records `key`'s public half (kept for good: what it signed keeps verifying after the
    /// key is rotated out).
    pub async fn register_signing_key(&self, key: &SigningKey) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO signing_keys (key_id, algorithm, public_key, first_used) \
                 VALUES ($1, 'ed25519', $2, $3) ON CONFLICT DO NOTHING",
                &[
                    &key.id(),
                    &key.public_key().as_slice(),
                    &self.clock.now().as_datetime(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Every public key the store has signed with, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<PublicKey>> {
        signing_keys(&**self.pool.get().await?).await
    }

    /// Signs a checkpoint through the last chained event, unless one is there already (then
    /// that one is the answer). `None` while the log is empty.
    pub async fn make_checkpoint(&self, key: &SigningKey) -> Result<Option<Checkpoint>> {
        let client = self.pool.get().await?;
        // The chain as the event itself carries it (which the table keeps from changing),
        // not the counter's copy.
        let row = client
            .query_opt(
                "SELECT e.sequence, e.chain FROM event_counter c \
                 JOIN events e ON e.sequence = c.chained_through WHERE e.chain IS NOT NULL",
                &[],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sequence: i64 = row.get(0);
        let chain: Vec<u8> = row.get(1);
        let time = self.clock.now();
        let signature = key.sign(signed_text(sequence, &hex::encode(&chain), &time).as_bytes());
        client
            .execute(
                "INSERT INTO log_checkpoints (sequence, chain, made_at, key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sequence) DO NOTHING",
                &[
                    &sequence,
                    &chain,
                    &time.as_datetime(),
                    &key.id(),
                    &signature.as_slice(),
                ],
            )
            .await?;
        let row = client
            .query_one(
                &format!("SELECT {CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE sequence = $1"),
                &[&sequence],
            )
            .await?;
        Ok(Some(checkpoint_of(&row)))
    }

    /// The latest checkpoint, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM log_checkpoints ORDER BY sequence DESC LIMIT 1"
                ),
                &[],
            )
            .await?;
        Ok(row.as_ref().map(checkpoint_of))
    }

    /// The links of the chain after event `since`, in order, at most `limit`: every tenant's
    /// events' digests (a digest reveals nothing of an event), so that a tenant can follow the
    /// chain from its own events to a checkpoint.
    pub async fn chain_links(&self, since: i64, limit: i64) -> Result<Vec<ChainLink>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT sequence, digest, chain, position, id, type, tenant, subject_id, \
                        occurred_at, CASE WHEN digest IS NULL THEN payload END AS payload \
                 FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                &[&since, &limit],
            )
            .await?;
        let bytes32 =
            |b: &[u8]| <[u8; 32]>::try_from(b).map_err(|_| Error::Integrity("not 32 bytes".into()));
        rows.iter()
            .map(|row| {
                let digest = match row.get::<_, Option<&[u8]>>("digest") {
                    Some(d) => bytes32(d)?,
                    // Written before digests were stored: computed from the event.
                    None => {
                        crate::events::chain::digest(&crate::events::StoredEvent::from_row(row)?)
                    }
                };
                Ok(ChainLink {
                    sequence: row.get("sequence"),
                    digest,
                    chain: row
                        .get::<_, Option<&[u8]>>("chain")
                        .map(bytes32)
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Checkpoints after sequence `since`, oldest first, at most `limit`.
    pub async fn checkpoints(&self, since: i64, limit: i64) -> Result<Vec<Checkpoint>> {
        checkpoints(&**self.pool.get().await?, since, limit).await
    }
}

/// Every public key the store has signed with, oldest first.
pub async fn signing_keys(client: &impl tokio_postgres::GenericClient) -> Result<Vec<PublicKey>> {
    let rows = client
        .query(
            "SELECT key_id, public_key, first_used FROM signing_keys ORDER BY first_used, key_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(PublicKey {
                key_id: row.get(0),
                public_key: <[u8; 32]>::try_from(row.get::<_, &[u8]>(1))
                    .map_err(|_| Error::Integrity("a stored public key is not 32 bytes".into()))?,
                first_used: Timestamp::from_datetime(row.get(2)),
            })
        })
        .collect()
}

/// Checkpoints after sequence `since`, oldest first, at most `limit`.
pub async fn checkpoints(
    client: &impl tokio_postgres::GenericClient,
    since: i64,
    limit: i64,
) -> Result<Vec<Checkpoint>> {
    let rows = client
        .query(
            &format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE sequence > $1 \
                 ORDER BY sequence LIMIT $2"
            ),
            &[&since, &limit],
        )
        .await?;
    Ok(rows.iter().map(checkpoint_of).collect())
}

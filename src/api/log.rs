//! `/log/checkpoint(s)` and `/keys`: the signed checkpoints of the event log's hash chain, and
//! the public keys that verify them (see `registry/checkpoints.rs` for what is signed).

use super::AppState;
use super::error::{Answer, ApiError};
use super::operations;
use super::problem::Problem;
use super::security::Auth;
use crate::auth::Scope;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use std::sync::Arc;

/// A signed checkpoint: through event `sequence` the log's chain was `chain`.
#[derive(Debug, Clone, Object)]
pub struct Checkpoint {
    /// The last event it covers.
    pub sequence: i64,
    /// The hash chain through that event (64 lowercase hex), as the event carries it in
    /// `GET /events`.
    pub chain: String,
    /// When it was signed (RFC 3339, microseconds, UTC).
    pub time: String,
    /// The signing key (`GET /keys`).
    pub key_id: String,
    /// Ed25519 signature (128 lowercase hex) over the four lines
    /// `artifactstore log checkpoint v1`, `sequence <sequence>`, `chain <chain>`,
    /// `time <time>`, each ending in a newline.
    pub signature: String,
}

impl From<crate::registry::Checkpoint> for Checkpoint {
    fn from(c: crate::registry::Checkpoint) -> Self {
        Checkpoint {
            sequence: c.sequence,
            chain: c.chain,
            time: c.time.to_string(),
            key_id: c.key_id,
            signature: c.signature,
        }
    }
}

/// Checkpoints, oldest first.
#[derive(Debug, Clone, Object)]
pub struct CheckpointPage {
    /// The checkpoints.
    pub items: Vec<Checkpoint>,
}

/// One event's link in the chain: no contents, only its number, digest and chain.
#[derive(Debug, Clone, Object)]
pub struct ChainLink {
    /// The event's number.
    pub sequence: i64,
    /// BLAKE3 (64 hex) of the event's canonical CBOR without `sequence` and `chain`.
    pub digest: String,
    /// The chain through the event (64 hex); absent while not chained yet.
    #[oai(skip_serializing_if_is_none)]
    pub chain: Option<String>,
}

/// Links of the chain, in order.
#[derive(Debug, Clone, Object)]
pub struct ChainLinks {
    /// The links.
    pub items: Vec<ChainLink>,
}

/// A public key the store signs (or signed) with.
#[derive(Debug, Clone, Object)]
pub struct SigningKeyInfo {
    /// Lowercase hex SHA-256 of the raw 32-byte public key.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// The key as a PEM SubjectPublicKeyInfo (`openssl pkey -pubin` reads it).
    pub public_key_pem: String,
    /// When it was first used.
    pub first_used: String,
    /// Whether this server signs with it now (older keys stay listed: what they signed keeps
    /// verifying).
    pub current: bool,
}

/// The store's public keys, oldest first.
#[derive(Debug, Clone, Object)]
pub struct SigningKeys {
    /// The keys.
    pub keys: Vec<SigningKeyInfo>,
}

/// A checkpoint made, or the one there already for the log's end.
#[derive(ApiResponse)]
pub enum MadeCheckpoint {
    /// Signed now.
    #[oai(status = 201)]
    Created(Json<Checkpoint>),
}

fn no_checkpoint() -> ApiError {
    ApiError::from_problem(Problem::new(
        poem::http::StatusCode::NOT_FOUND,
        "no checkpoint yet: the log is empty, or none has been signed (POST /log/checkpoints)",
    ))
}

pub struct LogApi;

#[OpenApi(tag = "super::ApiTags::Events")]
impl LogApi {
    /// Get the latest checkpoint
    ///
    /// The latest signed checkpoint of the event log (any token may read it: it reveals the
    /// log's length and a hash, no event). Save it: `artifactstore log verify
    /// --from-checkpoint` later proves the log up to it was not rewritten. 404 before the
    /// first.
    #[oai(
        path = "/log/checkpoint",
        method = "get",
        operation_id = "getLatestCheckpoint"
    )]
    async fn latest(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
    ) -> Answer<Json<Checkpoint>, operations::GetLatestCheckpoint> {
        state.authorize(&auth, Scope::Read)?;
        let latest = state.registry.latest_checkpoint().await?;
        Ok(Json(latest.ok_or_else(no_checkpoint)?.into()))
    }

    /// List checkpoints
    ///
    /// Signed checkpoints after event `since`, oldest first. Checkpoints are made every
    /// `ARTIFACTSTORE_CHECKPOINT_SECONDS` while the log grows, and on demand.
    #[oai(
        path = "/log/checkpoints",
        method = "get",
        operation_id = "listCheckpoints"
    )]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        /// Only checkpoints after this event (default 0).
        #[oai(validator(minimum(value = "0")))]
        since: Query<Option<i64>>,
        /// Page size, 1-1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
    ) -> Answer<Json<CheckpointPage>, operations::ListCheckpoints> {
        state.authorize(&auth, Scope::Read)?;
        let items = state
            .registry
            .checkpoints(since.0.unwrap_or(0), i64::from(limit.0.unwrap_or(100)))
            .await?;
        Ok(Json(CheckpointPage {
            items: items.into_iter().map(Checkpoint::from).collect(),
        }))
    }

    /// List the chain's links
    ///
    /// Every event's number, digest and chain after event `since` (any token, every tenant's
    /// events: a digest reveals nothing of an event). With them a tenant follows the chain
    /// from its own events, whose digests it recomputes from their CBOR, to a checkpoint,
    /// without seeing another tenant's data: `chain(n) = BLAKE3(chain(n-1) || n as 8 bytes
    /// big-endian || digest(n))`.
    #[oai(path = "/log/links", method = "get", operation_id = "listChainLinks")]
    async fn links(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
        /// Only events after this one (default 0).
        #[oai(validator(minimum(value = "0")))]
        since: Query<Option<i64>>,
        /// Page size, 1-1000 (default 1000): a digest an event was written without is
        /// computed from its payload, so a page reads at most this many.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
    ) -> Answer<Json<ChainLinks>, operations::ListChainLinks> {
        state.authorize(&auth, Scope::Read)?;
        let links = state
            .registry
            .chain_links(since.0.unwrap_or(0), i64::from(limit.0.unwrap_or(1000)))
            .await?;
        Ok(Json(ChainLinks {
            items: links
                .into_iter()
                .map(|l| ChainLink {
                    sequence: l.sequence,
                    digest: hex::encode(l.digest),
                    chain: l.chain.map(hex::encode),
                })
                .collect(),
        }))
    }

    /// Make a checkpoint
    ///
    /// Admin scope: signs a checkpoint through the last event now (the one there already when
    /// no event came since). 404 while the log is empty.
    #[oai(
        path = "/log/checkpoints",
        method = "post",
        operation_id = "makeCheckpoint"
    )]
    async fn make(
        &self,
        state: Data<&Arc<AppState>>,
        auth: Auth,
    ) -> Answer<MadeCheckpoint, operations::MakeCheckpoint> {
        state.authorize(&auth, Scope::Admin)?;
        state.registry.sequencer().numbered().await;
        let made = state.registry.make_checkpoint(&state.signer).await?;
        Ok(MadeCheckpoint::Created(Json(
            made.ok_or_else(no_checkpoint)?.into(),
        )))
    }

    /// List the public keys
    ///
    /// Every key the store has signed with, for verifying checkpoints offline. No token
    /// needed: these are public keys.
    #[oai(path = "/keys", method = "get", operation_id = "listKeys")]
    async fn keys(
        &self,
        state: Data<&Arc<AppState>>,
    ) -> Answer<Json<SigningKeys>, operations::ListKeys> {
        let keys = state.registry.signing_keys().await?;
        let keys = keys
            .into_iter()
            .map(|k| {
                Ok(SigningKeyInfo {
                    current: k.key_id == state.signer.id(),
                    public_key_pem: crate::signing::public_key_pem(&k.public_key)?,
                    key_id: k.key_id,
                    algorithm: "ed25519".into(),
                    first_used: k.first_used.to_string(),
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Json(SigningKeys { keys }))
    }
}

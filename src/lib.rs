//! # artifact-store
//!
//! The system of record for generated outputs. A producer creates a *package*, streams files
//! into it, and *finalizes* it: the package becomes immutable and gets a manifest in canonical
//! CBOR with a JCS JSON projection. Files are content-addressed by BLAKE3 and SHA-256, computed
//! in one streaming pass; identical bytes are stored once.
//!
//! PostgreSQL holds an append-only event log (gapless sequence numbers, given as events commit) and
//! views derived from it in the same transaction; [`events::replay`] rebuilds the views from
//! the log exactly. Bytes live in a pluggable [`storage::BlobStore`].
//!
//! The library is the product: the HTTP server ([`api`]) and the CLI ([`cli`]) are thin layers
//! over [`registry::Registry`].
#![warn(missing_docs)]
// Functions longer than `clippy.toml`'s threshold read better split into named steps.
#![warn(clippy::too_many_lines)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod health;
pub mod identity;
pub mod manifest;
pub mod metrics;
pub mod registry;
pub mod retention;
pub mod service;
pub mod signing;
pub mod storage;
pub mod telemetry;
pub mod worker;

pub use error::{Error, Result};
pub use identity::{ContentAddress, DualDigest, DualHasher};
pub use manifest::Manifest;
pub use registry::Registry;

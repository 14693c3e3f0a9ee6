//! What this process holds of an upload session between its requests: the running digest of
//! the bytes received, so that completion need not read them again. Lost on a restart, and
//! valid only while it covers exactly the bytes the session recorded (another process that
//! took a chunk moved the offset past it): completion then hashes the kept bytes instead.

use crate::domain::Timestamp;
use crate::identity::DualHasher;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The live state of the sessions this process is receiving, by session id.
pub(crate) type LiveUploads = Arc<Mutex<HashMap<Uuid, LiveUpload>>>;

/// A session's state in this process, valid while `received` equals its recorded offset.
pub(crate) struct LiveUpload {
    /// Bytes hashed so far.
    pub(super) received: u64,
    pub(super) hasher: DualHasher,
    /// When the session's last chunk ended.
    pub(super) touched: Timestamp,
}

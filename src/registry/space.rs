//! Free disk space: the server's own filesystems (local backends, upload spools) keep
//! [`Limits::min_free_bytes`](super::Limits::min_free_bytes) free, so that a full disk refuses
//! new writes (507) instead of failing everything that shares it (the private PostgreSQL
//! cluster, when it shares the disk). Reads, finalize and deletes go on.

use super::Registry;
use crate::error::{Error, Result};
use crate::storage::BlobStore;

/// A filesystem the server writes to, and how full it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpace {
    /// What writes there: a backend's id, or `uploads` (the upload spools).
    pub name: String,
    /// Free bytes.
    pub free_bytes: u64,
    /// Below [`Limits::min_free_bytes`](super::Limits::min_free_bytes): new writes are refused.
    pub low: bool,
}

impl Registry {
    /// Refuses a write of `size` bytes (0 when unknown) to `backend` if its filesystem would be
    /// left with less than the minimum free (a backend of this server's disk only).
    pub(super) async fn check_backend_space(
        &self,
        backend: &dyn BlobStore,
        size: Option<u64>,
    ) -> Result<()> {
        if self.limits.min_free_bytes == 0 {
            return Ok(());
        }
        match backend.free_bytes().await {
            Some(free) => self.check_space(backend.id(), free, size),
            None => Ok(()),
        }
    }

    /// The same for the upload spools' filesystem.
    pub(super) async fn check_spool_space(&self, size: Option<u64>) -> Result<()> {
        if self.limits.min_free_bytes == 0 {
            return Ok(());
        }
        match crate::storage::local::free_bytes(self.spool_root()).await {
            Some(free) => self.check_space("uploads", free, size),
            None => Ok(()),
        }
    }

    fn check_space(&self, name: &str, free: u64, size: Option<u64>) -> Result<()> {
        let min = self.limits.min_free_bytes;
        if free < min.saturating_add(size.unwrap_or(0)) {
            return Err(Error::InsufficientStorage(format!(
                "the disk of `{name}` has {free} bytes free, and keeps at least {min} free \
                 (ARTIFACTSTORE_MIN_FREE_BYTES): new writes wait until space is freed"
            )));
        }
        Ok(())
    }

    /// How full each filesystem the server writes to is (local backends and the upload
    /// spools), for health reports.
    pub async fn disk_space(&self) -> Vec<DiskSpace> {
        let min = self.limits.min_free_bytes;
        let mut found = Vec::new();
        for backend in self.backends.all() {
            if let Some(free) = backend.free_bytes().await {
                found.push(DiskSpace {
                    name: backend.id().to_owned(),
                    free_bytes: free,
                    low: free < min,
                });
            }
        }
        if let Some(free) = crate::storage::local::free_bytes(self.spool_root()).await {
            found.push(DiskSpace {
                name: "uploads".into(),
                free_bytes: free,
                low: free < min,
            });
        }
        found
    }

    /// The upload spools' directory, or the nearest parent that exists (it is made on first
    /// use).
    fn spool_root(&self) -> &std::path::Path {
        let mut dir = self.upload_dir.as_path();
        while !dir.exists() {
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
        dir
    }
}

//! Removing abandoned staged writes: staged objects and unfinished multipart uploads older than
//! a cutoff, but never an upload session's (those live as long as their session).

use super::{S3Store, STAGING, pieces};
use crate::error::Result;

impl S3Store {
    /// Removes staged objects and unfinished multipart uploads begun before `cutoff`
    /// (abandoned writes); returns how many were removed.
    pub async fn sweep_staging(&self, cutoff: std::time::SystemTime) -> Result<usize> {
        let inner = &self.inner;
        let prefix = format!("{}{STAGING}/", inner.prefix);
        let cutoff = aws_sdk_s3::primitives::DateTime::from(cutoff);
        let mut removed = 0;
        // Every unfinished multipart upload under our prefix is staging (those announced to
        // an address run at its final key until completed), but those of upload sessions,
        // which live as long as their session (see `pieces`).
        // (Any backend's: another backend's prefix may lie under ours in a shared bucket.)
        let is_session = |key: &str| {
            key.starts_with(&format!("{}/", pieces::UPLOADS))
                || key.contains(&format!("/{}/", pieces::UPLOADS))
        };
        for (key, upload_id, initiated) in inner.multipart_uploads(&inner.prefix).await? {
            let old = initiated.is_some_and(|t| t.secs() < cutoff.secs());
            if old && !is_session(&key) {
                inner.abort_upload(&key, &upload_id).await?;
                removed += 1;
            }
        }
        for (key, modified) in inner.objects(&prefix).await? {
            if modified.is_some_and(|t| t.secs() < cutoff.secs()) {
                inner.delete_key(&key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

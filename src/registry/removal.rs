//! Taking things out before their retention runs out: a file out of an open package, an open
//! package abandoned, a finalized package withdrawn. Each is one event; the views drop the
//! files (their bytes are collected once nothing else names them) and keep a package's row and
//! manifest as its record, with who removed it, when and why.

use super::Registry;
use super::admission::{check_open, held, holds};
use super::types::{FileRecord, IfMatch, Package, PackageStatus};
use crate::domain::{PackageId, RelativePath, TenantId, validate_label};
use crate::error::{Error, Result};
use crate::events::{self, DomainEvent, FileRemoved, PackageAbandoned, PackageWithdrawn};

impl Registry {
    /// Removes a package before its retention runs out: an open one is abandoned; a finalized
    /// one is withdrawn, only if `may_withdraw` (a tenant admin), else `Forbidden`. Refused
    /// while under legal hold (`Conflict`); a package already gone is `Gone`. `by` is the
    /// token's name; `reason` is a label.
    pub async fn remove_package(
        &self,
        tenant: &TenantId,
        id: PackageId,
        by: &str,
        reason: Option<String>,
        may_withdraw: bool,
    ) -> Result<Package> {
        if let Some(reason) = &reason {
            validate_label("reason", reason)?;
        }
        let removed = self.retention_mutation(tenant, id, |package, now| {
            if package.retention.legal_hold {
                return Err(Error::Conflict(format!(
                    "package {id} is under legal hold{}: release the hold first",
                    package
                        .retention
                        .hold_reason
                        .as_deref()
                        .map_or_else(String::new, |r| format!(" ({})", r.escape_debug()))
                )));
            }
            match package.status {
                PackageStatus::Open => Ok(DomainEvent::of(
                    tenant,
                    PackageAbandoned {
                        package_id: id,
                        abandoned_by: by.to_owned(),
                        reason: reason.clone(),
                        abandoned_at: now,
                    },
                )),
                PackageStatus::Finalized if may_withdraw => Ok(DomainEvent::of(
                    tenant,
                    PackageWithdrawn {
                        package_id: id,
                        withdrawn_by: by.to_owned(),
                        reason: reason.clone(),
                        withdrawn_at: now,
                    },
                )),
                PackageStatus::Finalized => Err(Error::Forbidden(format!(
                    "package {id} is finalized: withdrawing it takes a token with the admin scope"
                ))),
                // `retention_mutation` answers `Gone` for the rest.
                other => Err(Error::Integrity(format!(
                    "package {id} is {} yet was found live",
                    other.as_str()
                ))),
            }
        })
        .await?;
        // Its open upload sessions end now: they take no more chunks, reserve no more quota,
        // and the upload sweep removes their bytes. (Should this not run, they end at their
        // lifetime, as before; none can start once the removal has committed.)
        // The removal has committed: a failure here is logged, never answered as the
        // removal's (a client told 500 would retry and get 410).
        let now = self.clock.now().as_datetime();
        let ended = async {
            self.pool
                .get()
                .await?
                .execute(
                    "UPDATE uploads SET expires_at = $2 WHERE package_id = $1 AND expires_at > $2",
                    &[&id.0, &now],
                )
                .await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = ended {
            tracing::warn!(error = %e, package = %id, "ending a removed package's upload sessions failed; they end at their lifetime");
        }
        Ok(removed)
    }

    /// Removes the file at `path` from an open package and returns it; with `if_match`, only
    /// if that file is the one named (`PreconditionFailed` otherwise). Its bytes stay while
    /// another file names them.
    pub async fn remove_file(
        &self,
        tenant: &TenantId,
        package: PackageId,
        path: &RelativePath,
        by: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<FileRecord> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        check_open(&tx, tenant, package, true).await?;
        if let Some(reason) = holds(&tx, &[package.0]).await?.remove(&package.0) {
            return Err(held(package, path, &reason));
        }
        let file = super::reads::file_at(&tx, tenant, package, path).await?;
        if let Some(condition) = if_match
            && !condition.holds(Some(&file.blake3))
        {
            return Err(Error::PreconditionFailed(format!(
                "the file at `{path}` is \"blake3:{}\", which `If-Match` does not name",
                file.blake3.to_hex()
            )));
        }
        let event = DomainEvent::of(
            tenant,
            FileRemoved {
                file_id: file.id,
                package_id: package,
                relative_path: file.relative_path.clone(),
                removed_by: by.to_owned(),
                removed_at: self.clock.now(),
            },
        );
        let recorded = events::record(&tx, vec![event]).await?;
        events::commit(tx, &recorded, &self.sequencer).await?;
        Ok(file)
    }
}

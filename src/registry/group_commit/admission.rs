//! A batch's admission: every file checked against its package (locked until the batch
//! commits), the files already at its paths, its tenant's byte quota and the package's legal
//! hold, in batch order, as lone ingests one after the other would be.

use super::{AwaitingCommit, BatchFile, Param};
use crate::domain::{FileId, TenantId};
use crate::error::{Error, Result};
use crate::identity::Digest;
use crate::registry::admission::{Existing, held, may_add_at, must_be_open};
use std::collections::HashMap;
use uuid::Uuid;

/// What a batch's files are admitted against: its packages (locked until the batch commits),
/// the files already at its paths, and its tenants' byte quotas. Each file is checked in
/// batch order, as a lone ingest would be, and counts for the files after it.
pub(super) struct BatchAdmission {
    /// Package id: tenant, status, file count.
    packages: HashMap<Uuid, (String, String, u64)>,
    /// The file at each (package, path), the batch's own included once admitted.
    at: HashMap<(Uuid, String), Existing>,
    rooms: HashMap<TenantId, crate::registry::Room>,
    /// The packages under legal hold (read only when a file of the batch may replace one).
    holds: HashMap<Uuid, String>,
}

impl BatchAdmission {
    /// Locks the batch's packages and reads what admitting its files needs.
    pub(super) async fn read(tx: &crate::db::Tx<'_>, items: &[AwaitingCommit]) -> Result<Self> {
        let mut packages: Vec<Uuid> = items.iter().map(|i| i.item.event.package_id.0).collect();
        packages.sort_unstable();
        packages.dedup();
        let file_packages: Vec<Uuid> = items.iter().map(|i| i.item.event.package_id.0).collect();
        let paths: Vec<&str> = items
            .iter()
            .map(|i| i.item.event.relative_path.as_str())
            .collect();
        let lock = tx
            .prepare_cached(
                "SELECT id, tenant, status, file_count FROM packages \
                 WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .await?;
        let taken = tx
            .prepare_cached(
                // One index probe per path (a subquery per row), whatever the table's
                // statistics say: a join let the planner hash a fresh `files` table
                // whole, and keep that plan until autoanalyze.
                // (A lateral subquery with LIMIT is not flattened into a join.)
                "SELECT u.package_id, u.relative_path, f.id, f.blake3 \
                 FROM unnest($1::uuid[], $2::text[]) AS u(package_id, relative_path) \
                 CROSS JOIN LATERAL ( \
                   SELECT f.id, f.blake3 FROM files f WHERE f.package_id = u.package_id \
                     AND f.relative_path = u.relative_path LIMIT 1) f",
            )
            .await?;
        // Sent together, executed in order: the paths are read once the rows are locked.
        let lock_params: [Param; 1] = [&packages];
        let taken_params: [Param; 2] = [&file_packages, &paths];
        let (rows, files) = futures::try_join!(
            tx.query(&lock, &lock_params),
            tx.query(&taken, &taken_params)
        )?;
        let writing: Vec<_> = items
            .iter()
            .map(|i| {
                let event = &i.item.event;
                (
                    &i.item.tenant,
                    event.package_id.0,
                    event.relative_path.as_str(),
                )
            })
            .collect();
        let now = items[0].item.event.ingested_at;
        let rooms = crate::registry::quota::rooms(tx, &writing, now).await?;
        // Only a file that asks to may replace one, and a held package's may not be.
        let may_replace = items
            .iter()
            .any(|i| i.item.request.replace || i.item.request.if_match.is_some());
        let holds = if may_replace {
            crate::registry::admission::holds(tx, &packages).await?
        } else {
            HashMap::new()
        };
        Ok(BatchAdmission {
            holds,
            packages: rows
                .iter()
                .map(|row| {
                    let count: i32 = row.get(3);
                    (row.get(0), (row.get(1), row.get(2), count as u64))
                })
                .collect(),
            at: files
                .iter()
                .map(|r| {
                    let blake3 = Digest::from_slice(r.get(3))
                        .map_err(|e| Error::Integrity(e.to_string()))?;
                    let existing = Existing {
                        id: FileId(r.get(2)),
                        blake3,
                    };
                    Ok(((r.get(0), r.get(1)), existing))
                })
                .collect::<Result<_>>()?,
            rooms,
        })
    }

    /// Admits one file (setting the file it replaces), or says why not.
    pub(super) fn admit(&mut self, file: &mut BatchFile) -> Result<()> {
        let event = &mut file.event;
        let package_id = event.package_id;
        let (status, count) = match self.packages.get_mut(&package_id.0) {
            Some((tenant, status, count)) if tenant == file.tenant.as_str() => (status, count),
            _ => return Err(Error::not_found("package", package_id)),
        };
        let key = (package_id.0, event.relative_path.as_str().to_owned());
        let existing = self.at.get(&key).copied();
        must_be_open(package_id, status)?;
        if existing.is_some()
            && let Some(reason) = self.holds.get(&package_id.0)
        {
            return Err(held(package_id, &event.relative_path, reason));
        }
        may_add_at(
            package_id,
            &file.request,
            existing.as_ref(),
            *count,
            file.max_files,
        )?;
        // A new file must fit its tenant's byte quota with the batch's files before it (a
        // replacement may free room: left to the check after recording).
        if existing.is_none()
            && let Some(room) = self.rooms.get_mut(&file.tenant)
        {
            if event.size > room.left() {
                return Err(room.refusal());
            }
            room.used += event.size;
        }
        if existing.is_none() {
            *count += 1;
        }
        event.replaced_file_id = existing.map(|e| e.id);
        self.at.insert(
            key,
            Existing {
                id: event.file_id,
                blake3: file.blake3,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PackageId, RelativePath, Timestamp};
    use crate::events::FileIngested;
    use crate::registry::IngestRequest;

    fn file(tenant: &TenantId, package: PackageId, path: &str, replace: bool) -> BatchFile {
        let relative_path = RelativePath::new(path).unwrap();
        BatchFile {
            tenant: tenant.clone(),
            request: IngestRequest {
                relative_path: relative_path.clone(),
                media_type: None,
                expected_digest: None,
                replace,
                if_match: None,
            },
            event: FileIngested {
                file_id: FileId::generate(),
                package_id: package,
                relative_path,
                size: 1,
                media_type: "application/octet-stream".into(),
                blake3: String::new(),
                sha256: String::new(),
                backend_id: "local".into(),
                storage_key: String::new(),
                replaced_file_id: None,
                ingested_at: Timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
            },
            blake3: Digest([1; 32]),
            sha256: Digest([2; 32]),
            max_files: 10,
        }
    }

    /// A batch's file may not replace one in a package under legal hold (even one an earlier
    /// file of the same batch added), but adds a new path.
    #[test]
    fn a_held_packages_files_are_not_replaced_in_a_batch() {
        let tenant = TenantId::new("acme").unwrap();
        let package = PackageId::generate();
        let mut admission = BatchAdmission {
            packages: [(package.0, ("acme".into(), "open".into(), 1))].into(),
            at: [(
                (package.0, "old.bin".to_owned()),
                Existing {
                    id: FileId::generate(),
                    blake3: Digest([3; 32]),
                },
            )]
            .into(),
            rooms: HashMap::new(),
            holds: [(package.0, "audit".to_owned())].into(),
        };
        let held = |admission: &mut BatchAdmission, path: &str| {
            let err = admission
                .admit(&mut file(&tenant, package, path, true))
                .unwrap_err();
            assert!(
                matches!(err, Error::Conflict(ref m) if m.contains("legal hold")),
                "{err}"
            );
        };
        held(&mut admission, "old.bin");
        admission
            .admit(&mut file(&tenant, package, "new.bin", false))
            .unwrap();
        held(&mut admission, "new.bin");
        // Without the hold, the replacement goes in.
        admission.holds.clear();
        let mut replacing = file(&tenant, package, "old.bin", true);
        admission.admit(&mut replacing).unwrap();
        assert!(replacing.event.replaced_file_id.is_some());
    }
}

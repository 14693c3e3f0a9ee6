//! Recording a file: the `v1.file.ingested` event, the quota check after it, the commit.

use super::types::FileRecord;
use crate::domain::TenantId;
use crate::error::Result;
use crate::events::{self, DomainEvent, FileIngested};

/// Records a `v1.file.ingested` event as the last step of `tx`, commits, and returns the file.
pub(super) async fn commit_file_event(
    tx: crate::db::Tx<'_>,
    tenant: &TenantId,
    event: FileIngested,
    blake3: crate::identity::Digest,
    sha256: crate::identity::Digest,
    sequencer: &events::Sequencer,
) -> Result<FileRecord> {
    let record = file_record(&event, blake3, sha256);
    let added = super::quota::Added {
        tenant: tenant.clone(),
        bytes: event.size,
        packages: 0,
        files: vec![(event.package_id.0, event.relative_path.as_str().to_owned())],
    };
    let now = event.ingested_at;
    let recorded = events::record(&tx, vec![DomainEvent::of(tenant, event)]).await?;
    super::quota::enforce(&tx, &[added], now).await?;
    events::commit(tx, &recorded, sequencer).await?;
    Ok(record)
}

/// The file an ingest event makes.
pub(super) fn file_record(
    event: &FileIngested,
    blake3: crate::identity::Digest,
    sha256: crate::identity::Digest,
) -> FileRecord {
    FileRecord {
        id: event.file_id,
        package_id: event.package_id,
        relative_path: event.relative_path.clone(),
        size: event.size,
        media_type: event.media_type.clone(),
        blake3,
        sha256,
        created_at: event.ingested_at,
    }
}

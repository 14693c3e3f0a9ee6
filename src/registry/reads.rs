//! Reading files back.

use super::Registry;
use super::types::{FILE_COLUMNS, FileRecord};
use crate::domain::{FileId, PackageId, RelativePath, TenantId};
use crate::error::{Error, Result};
use crate::storage::{ByteRange, ByteStream};

/// A file's bytes (or a range of them), ready to stream.
pub struct FileDownload {
    /// The file.
    pub file: FileRecord,
    /// The range being sent; `None` for the whole file.
    pub range: Option<ByteRange>,
    /// The bytes.
    pub body: ByteStream,
}

impl Registry {
    /// A file's record.
    pub async fn get_file(&self, tenant: &TenantId, id: FileId) -> Result<FileRecord> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {FILE_COLUMNS} FROM files f JOIN blobs b ON b.blake3 = f.blake3 \
                     WHERE f.id = $1 AND f.tenant = $2"
                ),
                &[&id.0, &tenant.as_str()],
            )
            .await?
            .ok_or_else(|| Error::not_found("file", id))?;
        FileRecord::from_row(&row)
    }

    /// The file at `path` in a package of the tenant's: `NotFound` when the package or the
    /// path is not there, `Gone` when the package has expired.
    pub async fn file_at(
        &self,
        tenant: &TenantId,
        package: PackageId,
        path: &RelativePath,
    ) -> Result<FileRecord> {
        let client = self.pool.get().await?;
        super::packages::live(super::packages::load_package(&**client, tenant, package).await?)?;
        file_at(&client, tenant, package, path).await
    }

    /// Streams a file, or `range` of it (which must lie within the file).
    pub async fn read_file(
        &self,
        tenant: &TenantId,
        id: FileId,
        range: Option<ByteRange>,
    ) -> Result<FileDownload> {
        let file = self.get_file(tenant, id).await?;
        self.read_record(file, range).await
    }

    /// Streams the bytes of a file as [`get_file`](Self::get_file) or
    /// [`file_at`](Self::file_at) found it for a tenant, or `range` of them (which must lie
    /// within the file).
    pub async fn read_record(
        &self,
        file: FileRecord,
        range: Option<ByteRange>,
    ) -> Result<FileDownload> {
        let id = file.id;
        if let Some(r) = range
            && (r.length == 0
                || r.offset
                    .checked_add(r.length)
                    .is_none_or(|end| end > file.size))
        {
            return Err(Error::InvalidInput(format!(
                "range {}+{} is outside the file's {} bytes",
                r.offset, r.length, file.size
            )));
        }
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT backend_id FROM storage_locations \
                 WHERE blake3 = $1 AND status = 'present' ORDER BY backend_id",
                &[&file.blake3.0.as_slice()],
            )
            .await?;
        drop(client);
        let address = file.content_address();
        let backend = rows
            .iter()
            .find_map(|r| self.backends.get(r.get::<_, &str>(0)))
            .ok_or_else(|| {
                Error::Integrity(format!("no configured backend holds {address} (file {id})"))
            })?;
        // A whole file is checked against its digest as it streams; a range cannot be.
        let body = match range {
            None => backend.get_checked(&address, file.blake3, file.size).await,
            Some(_) => backend.get(&address, range).await,
        };
        let body = match body {
            Ok(body) => body,
            // The database says the bytes are there: their absence is our fault, not the
            // caller's, and must not read as "no such file".
            Err(Error::NotFound { .. }) => {
                return Err(Error::Integrity(format!(
                    "backend `{}` has lost {address} (file {id})",
                    backend.id()
                )));
            }
            Err(e) => return Err(e),
        };
        Ok(FileDownload { file, range, body })
    }
}

/// The file at `path` of a package of the tenant's, or `NotFound`.
pub(super) async fn file_at(
    client: &impl deadpool_postgres::GenericClient,
    tenant: &TenantId,
    package: PackageId,
    path: &RelativePath,
) -> Result<FileRecord> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {FILE_COLUMNS} FROM files f JOIN blobs b ON b.blake3 = f.blake3 \
                 WHERE f.package_id = $1 AND f.relative_path = $2 AND f.tenant = $3"
            ),
            &[&package.0, &path.as_str(), &tenant.as_str()],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("file `{path}` in package {package}"),
        })?;
    FileRecord::from_row(&row)
}

//! Validated domain values: ids, tenants, relative paths, timestamps, metadata.

mod names;
mod path;
mod secret;
mod timestamp;

pub use names::{FileId, Metadata, PackageId, TenantId, validate_label};
pub use path::RelativePath;
pub use secret::read_secret;
pub use timestamp::{Clock, SystemClock, Timestamp};

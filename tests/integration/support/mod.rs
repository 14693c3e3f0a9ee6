//! What the integration tests share: real PostgreSQL databases, a registry over a local
//! store, the real server process, HTTP helpers, and the binary's commands.

mod db;
mod http;
mod nginx;
mod process;
mod registry;
mod server;

pub use db::*;
pub use http::*;
pub use nginx::*;
pub use process::*;
pub use registry::*;
pub use server::*;

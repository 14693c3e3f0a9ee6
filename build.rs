//! The SQL migrations under `sql/` are embedded at compile time (`refinery::embed_migrations!`):
//! a migration added or changed must rebuild the crate, which a macro reading files cannot ask
//! for itself.
fn main() {
    println!("cargo:rerun-if-changed=sql");
}

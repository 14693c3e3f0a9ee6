//! Retention and upkeep: the policy (pure functions of state and a clock) and the background
//! worker that applies it. (Garbage collection of unreferenced blobs joins it here.)

pub mod policy;
pub mod worker;

pub use policy::{DueReason, RetentionFacts};
pub use worker::{PassReport, Worker, WorkerOptions};

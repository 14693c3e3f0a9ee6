//! Retention and upkeep: the background worker. (Retention classes, expiry, legal hold and
//! garbage collection of unreferenced blobs join it here.)

pub mod worker;

pub use worker::{PassReport, Worker, WorkerOptions};

//! One integration test binary against real PostgreSQL: see `harness.rs`.

mod harness;

mod api;
mod cli;
mod crosscheck;
mod event_log;
mod events_api;
mod faults;
mod gc;
mod group_commit;
mod hostile;
mod managed_postgres;
mod postgres_tls;
mod quotas;
mod registry_flow;
mod replay;
mod retention;
mod routed;
mod s3;
mod s3_strict;
mod server;
mod storage_conformance;
mod uploads;
mod write_through;

//! One integration test binary against real PostgreSQL (and Ceph RGW where `scripts/test`
//! starts it); the fixtures the tests share are in `support/`.

mod support;

mod api;
mod backup;
mod cli;
mod crosscheck;
mod event_log;
mod events_api;
mod faults;
mod gc;
mod group_commit;
mod hostile;
mod log_copy;
mod log_proof;
mod managed_postgres;
mod operations;
mod postgres_tls;
mod provenance;
mod quotas;
mod registry_flow;
mod replay;
mod replicas;
mod retention;
mod routed;
mod s3;
mod s3_strict;
mod sdk_rust;
mod server;
mod shared_uploads;
mod storage_conformance;
mod uploads;

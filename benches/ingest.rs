//! Foundation benchmark: library ingest of a large file into the local backend, beside
//! same-run baselines on the same file and filesystem; committed events/s with 16 writers;
//! replay events/s. Prints a Markdown report.
//!
//!     cargo bench --bench ingest                  # 1 GiB
//!     BENCH_SIZE_MIB=256 cargo bench --bench ingest
//!
//! Baselines (each best of 3): (a) `openssl dgst -sha256 FILE`, (b) `dd bs=1M conv=fsync`
//! copy to the same filesystem, (c) = (a) + (b) one after the other. Target: ingest >= 1.0x (c).

mod common;

use artifactstore::domain::{Metadata, PackageId, RelativePath, TenantId, Timestamp};
use artifactstore::events::{self, DomainEvent, PackageCreated};
use artifactstore::registry::{IngestRequest, NewPackage};
use artifactstore::storage::BlobStore;
use common::{best, make_file, mbps, time};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 3;
/// Rounds of committed events/s, each next to a `pgbench` run.
const EVENT_ROUNDS: usize = 3;

#[tokio::main]
async fn main() {
    let size_mib: u64 = std::env::var("BENCH_SIZE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let size = size_mib << 20;
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-ingest");
    std::fs::create_dir_all(&work).unwrap();
    let input = work.join("input.bin");
    make_file(&input, size);
    let copy = work.join("copy.bin");

    // Warm the page cache once so every contender reads the input from memory.
    time(
        Command::new("cat")
            .arg(&input)
            .stdout(std::process::Stdio::null()),
    );
    let sha = best(RUNS, || {
        time(
            Command::new("openssl")
                .args(["dgst", "-sha256"])
                .arg(&input)
                .stdout(std::process::Stdio::null()),
        )
    });
    let dd = best(RUNS, || {
        let _ = std::fs::remove_file(&copy);
        time(
            Command::new("dd")
                .arg(format!("if={}", input.display()))
                .arg(format!("of={}", copy.display()))
                .args(["bs=1M", "conv=fsync", "status=none"]),
        )
    });
    let _ = std::fs::remove_file(&copy);
    let baseline_c = sha + dd;

    // A private cluster with durability on (fsync), like production.
    let common::BenchRegistry {
        mut cluster,
        db,
        url,
        store,
        registry,
    } = common::bench_registry(&work, 32).await;
    let tenant = TenantId::default_tenant();

    let mut ingest_times = Vec::new();
    for i in 0..RUNS {
        let package = registry
            .create_package(
                &tenant,
                NewPackage {
                    producer: "bench".into(),
                    subject: format!("run {i}"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let file = tokio::fs::File::open(&input).await.unwrap();
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let request = IngestRequest {
            relative_path: RelativePath::new("big.bin").unwrap(),
            media_type: None,
            expected_digest: None,
            replace: false,
            if_match: None,
        };
        let start = Instant::now();
        let record = registry
            .ingest_file(&tenant, package.id, request, body)
            .await
            .unwrap();
        ingest_times.push(start.elapsed());
        // Remove the stored blob so the next run writes it again (no dedup shortcut).
        store.delete(&record.content_address()).await.unwrap();
    }
    let ingest = *ingest_times.iter().min().unwrap();

    // Committed events/s, 16 concurrent writers, one event per transaction (one sequencer:
    // one process), until the last event is numbered (visible to readers), in rounds
    // interleaved with `pgbench`'s: this machine's speed drifts within a minute, so each
    // round's ratio is taken against the baseline run next to it.
    artifactstore::db::connect(&url)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE pgbench_rows (id bigserial PRIMARY KEY, at timestamptz)")
        .await
        .unwrap();
    let sequencer = events::Sequencer::new(artifactstore::db::pool(&url, 1).unwrap());
    let mut event_rounds = Vec::new();
    for round in 0..EVENT_ROUNDS {
        let rate = committed_events(&url, &tenant, &sequencer, round).await;
        let pgbench = pgbench_inserts(&url, &work);
        event_rounds.push((rate, pgbench));
    }

    let replay = events::replay(registry.pool(), false).await.unwrap();

    let admin = artifactstore::db::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    drop(registry);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    let _ = std::fs::remove_dir_all(work.join("blobs"));
    cluster.stop();

    let ratio = baseline_c.as_secs_f64() / ingest.as_secs_f64();
    println!("## Foundation benchmark ({size_mib} MiB, best of {RUNS})\n");
    println!("| what | time | MB/s | vs (c) |");
    println!("|---|---|---|---|");
    println!(
        "| (a) `openssl dgst -sha256` | {sha:.2?} | {:.0} | |",
        mbps(size, sha)
    );
    println!(
        "| (b) `dd bs=1M conv=fsync` copy | {dd:.2?} | {:.0} | |",
        mbps(size, dd)
    );
    println!(
        "| (c) = (a) then (b) | {baseline_c:.2?} | {:.0} | 1.00x |",
        mbps(size, baseline_c)
    );
    println!(
        "| **library ingest** (BLAKE3 + SHA-256 + fsync'd local store + PostgreSQL commit) | {ingest:.2?} | {:.0} | **{ratio:.2}x** |",
        mbps(size, ingest)
    );
    println!();
    println!("| event log | result |");
    println!("|---|---|");
    for (i, (rate, pgbench)) in event_rounds.iter().enumerate() {
        println!(
            "| round {}: `pgbench`, 16 clients, one single-row INSERT per transaction | {pgbench:.0}/s |",
            i + 1
        );
        println!(
            "| round {}: committed events/s, 16 writers, 1 event per transaction (fsync on) | {rate:.0}/s = {:.3}x `pgbench` |",
            i + 1,
            rate / pgbench
        );
    }
    let mut ratios: Vec<f64> = event_rounds.iter().map(|(r, p)| r / p).collect();
    ratios.sort_by(f64::total_cmp);
    let best = event_rounds.iter().map(|(r, _)| *r).fold(0.0, f64::max);
    println!(
        "| committed events/s: median ratio {:.3}x `pgbench`, best rate {best:.0}/s; target >= 3,000/s: {} |",
        ratios[ratios.len() / 2],
        if best >= 3000.0 { "MET" } else { "NOT MET" }
    );
    println!(
        "| replay | {} events in {:.2?} = {:.0}/s |",
        replay.events,
        replay.elapsed,
        replay.events as f64 / replay.elapsed.as_secs_f64()
    );
    println!(
        "\ntarget: ingest >= 1.00x (c): {}",
        if ratio >= 1.0 { "MET" } else { "NOT MET" }
    );
}

/// Committed events/s: 16 writers each commit 500 package creations, one event per
/// transaction, until the last is numbered.
async fn committed_events(
    url: &str,
    tenant: &TenantId,
    sequencer: &events::Sequencer,
    round: usize,
) -> f64 {
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 500;
    eprintln!("bench: event writers start");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let url = url.to_owned();
        let tenant = tenant.clone();
        let sequencer = sequencer.clone();
        tasks.push(tokio::spawn(async move {
            let pool = artifactstore::db::pool(&url, 1).unwrap();
            let mut client = pool.get().await.unwrap();
            for i in 0..PER_WRITER {
                let tx = client.transaction().await.unwrap();
                let event = DomainEvent::new(PackageCreated {
                    package_id: PackageId::generate(),
                    tenant: tenant.clone(),
                    producer: format!("w{w}"),
                    subject: format!("{round}.{i}"),
                    retention_class: "short".into(),
                    metadata: Metadata::default(),
                    created_at: Timestamp::parse("2026-11-22T00:00:00Z").unwrap(),
                });
                let recorded = events::record(&tx, vec![event]).await.unwrap();
                events::commit(tx, &recorded, &sequencer).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    sequencer.numbered().await;
    (WRITERS * PER_WRITER) as f64 / start.elapsed().as_secs_f64()
}

/// Single-row INSERT transactions per second that `pgbench` commits with 16 clients on the
/// same database: what PostgreSQL alone does here, the event log's baseline.
fn pgbench_inserts(url: &str, work: &Path) -> f64 {
    let bin = artifactstore::db::cluster::find_server_binaries().unwrap();
    let pgbench = Some(bin.join("pgbench"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "pgbench".into());
    let script = work.join("insert.sql");
    std::fs::write(&script, "INSERT INTO pgbench_rows (at) VALUES (now());\n").unwrap();
    let out = Command::new(pgbench)
        .args(["-n", "-c", "16", "-j", "2", "-T", "5", "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

//! Event stream benchmark against the real server (release build, private PostgreSQL with
//! fsync on). Prints Markdown.
//!
//!     cargo bench --bench events
//!
//! - Wake-up latency: a consumer long-polls continuously while 1,000 events are committed one
//!   at a time; latency = when the consumer has the event - when COMMIT returned. Target p99
//!   < 10 ms.
//! - 5,000 concurrent idle long-polls on one server: its RSS (target < 300 MiB), how many LISTEN
//!   connections PostgreSQL sees from it (must be 1), and the time from one commit until the
//!   last of them has answered.

mod common;

use artifactstore::domain::{Metadata, PackageId, TenantId, Timestamp};
use artifactstore::events::{self, DomainEvent, PackageCreated};
use common::status_kib;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_artifactstore");

fn event(i: usize) -> DomainEvent {
    DomainEvent::new(PackageCreated {
        package_id: PackageId::generate(),
        tenant: TenantId::default_tenant(),
        producer: "bench".into(),
        subject: format!("{i}"),
        retention_class: "short".into(),
        metadata: Metadata::default(),
        created_at: Timestamp::parse("2026-11-22T00:00:00Z").unwrap(),
    })
}

/// Commits one event and has this process's sequencer number it, as a server does for its
/// writes: its sequence number, and when its COMMIT returned (before the numbering pass).
async fn commit(
    pool: &deadpool_postgres::Pool,
    sequencer: &events::Sequencer,
    i: usize,
) -> (i64, Instant) {
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let stored = events::record(&tx, vec![event(i)]).await.unwrap();
    tx.commit().await.unwrap();
    let committed_at = Instant::now();
    sequencer.numbered().await;
    let sequence = client
        .query_one(
            "SELECT sequence FROM events WHERE position = $1",
            &[&stored[0].position],
        )
        .await
        .unwrap()
        .get(0);
    (sequence, committed_at)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    // 5,000 connections need more descriptors than the usual 1,024 (the server inherits this).
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 65_536, 65_536);
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-events");
    let _ = std::fs::remove_dir_all(work.join("data"));
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ARTIFACTSTORE_DATA_DIR", work.join("data"))
        .env("ARTIFACTSTORE_LOG", "warn")
        // Every waiter is the one development tenant's: let it hold them all (the default
        // allows a tenant 1,000, and the rest would be refused at once).
        .env("ARTIFACTSTORE_MAX_LONG_POLLS_PER_TENANT", "10000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let pid = child.id();
    let password = std::fs::read_to_string(work.join("data/postgres/password")).unwrap();
    let pg_port: u16 = std::fs::read_to_string(work.join("data/postgres/pgdata/postmaster.pid"))
        .unwrap()
        .lines()
        .nth(3)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let url = format!(
        "postgres://artifactstore:{}@127.0.0.1:{pg_port}/artifactstore",
        password.trim()
    );
    let pool = artifactstore::db::pool(&url, 4).unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();
    let sequencer = events::Sequencer::new(pool.clone());
    commit(&pool, &sequencer, 0).await;

    // 1. Wake-up latency.
    const EVENTS: usize = 1000;
    let received: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let consumer = {
        let received = received.clone();
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let mut since = 1i64;
            while received.lock().unwrap().len() < EVENTS {
                let resp = http
                    .get(format!("{base}/events?since={since}&wait=30&limit=1000"))
                    .send()
                    .await
                    .unwrap();
                let bytes = resp.bytes().await.unwrap();
                let now = Instant::now();
                let value = artifactstore::manifest::canonical::decode_value(&bytes).unwrap();
                let json = artifactstore::manifest::canonical::to_json(&value).unwrap();
                for e in json["events"].as_array().unwrap() {
                    received
                        .lock()
                        .unwrap()
                        .insert(e["sequence"].as_i64().unwrap(), now);
                }
                since = json["next_since"].as_i64().unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut committed = HashMap::new();
    for i in 0..EVENTS {
        let (seq, committed_at) = commit(&pool, &sequencer, i + 1).await;
        committed.insert(seq, committed_at);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    consumer.await.unwrap();
    let received = std::mem::take(&mut *received.lock().unwrap());
    let mut latencies: Vec<Duration> = committed
        .iter()
        .map(|(seq, at)| received[seq].saturating_duration_since(*at))
        .collect();
    latencies.sort();

    // 2. 5,000 idle long-polls.
    const WAITERS: usize = 5000;
    let rss_before = status_kib(pid, "VmRSS:");
    let (latest, _) = commit(&pool, &sequencer, 100_000).await;
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut waiters = Vec::with_capacity(WAITERS);
    let many = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..WAITERS {
        let http = many.clone();
        let url = format!("{base}/events?since={latest}&wait=60");
        let answered = answered.clone();
        waiters.push(tokio::spawn(async move {
            let resp = http.get(url).send().await.expect("long-poll");
            let _ = resp.bytes().await;
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Instant::now()
        }));
    }
    // Wait until the server holds them all (its connection count settles).
    let mut held = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        if held >= WAITERS {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_waiting = status_kib(pid, "VmRSS:");
    let admin = artifactstore::db::connect(&url).await.unwrap();
    let listeners: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&events::bus::LISTENER_APPLICATION_NAME],
        )
        .await
        .unwrap()
        .get(0);
    let early = answered.load(std::sync::atomic::Ordering::SeqCst);
    let (_, woke_at) = commit(&pool, &sequencer, 100_001).await;
    let mut last = woke_at;
    for w in waiters {
        last = last.max(w.await.unwrap());
    }
    let all_answered = last.duration_since(woke_at);
    let rss_peak = status_kib(pid, "VmHWM:");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();

    println!("## Event stream benchmark (release server, private PostgreSQL with fsync on)\n");
    println!("| what | result |");
    println!("|---|---|");
    println!(
        "| wake-up latency, commit returned -> long-poll client has the event ({EVENTS} events) | p50 **{:.2} ms**, p99 **{:.2} ms**, max {:.2} ms |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "| {WAITERS} idle long-polls: server RSS before / while holding them / peak | {} / **{}** / {} MiB |",
        rss_before / 1024,
        rss_waiting / 1024,
        rss_peak / 1024
    );
    println!("| open descriptors of the server while holding them | {held} |");
    println!("| LISTEN connections PostgreSQL sees from the server | **{listeners}** |");
    println!("| waiters that answered before the commit (must be 0) | {early} |");
    println!(
        "| one commit -> the last of the {WAITERS} waiters has its answer | **{:.0} ms** |",
        all_answered.as_secs_f64() * 1e3
    );
    if early > 0 {
        println!();
        println!(
            "**Not a valid run:** {early} waiters were answered before the commit (refused, or \
             timed out), so the server did not hold {WAITERS}."
        );
    }
}

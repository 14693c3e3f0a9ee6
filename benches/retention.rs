//! Retention benchmark: expire 100,000 due packages and collect their blobs (local backend,
//! private PostgreSQL with fsync on), through the same registry calls the worker makes.
//! Prints Markdown.
//!
//!     cargo bench --bench retention            # BENCH_PACKAGES to change the count
//!
//! The fixture (finalized packages past their expiry, one unique 64-byte blob each, the bytes
//! on disk) is written straight into the views with SQL: building it through 300,000 API calls
//! would take longer than the thing measured. Expiry and collection then run for real: claims
//! with `FOR UPDATE SKIP LOCKED`, events, view updates, byte deletion. Target: over 1,000
//! blobs/s.

mod common;

use artifactstore::identity::DualHasher;
use std::path::Path;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("BENCH_PACKAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-retention");
    let _ = std::fs::remove_dir_all(work.join("blobs"));
    std::fs::create_dir_all(&work).unwrap();
    let common::BenchRegistry {
        mut cluster,
        db,
        url,
        store,
        registry,
    } = common::bench_registry(&work, 8).await;

    // Fixture: the bytes on disk, then the rows.
    let started = Instant::now();
    let mut digests = Vec::with_capacity(count);
    for i in 0..count {
        let data = format!("{i:064}");
        let digest = DualHasher::digest(data.as_bytes());
        let path = store.path_of(&digest.primary_address());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data.as_bytes()).unwrap();
        digests.push((digest.blake3.0.to_vec(), digest.sha256.0.to_vec()));
    }
    let client = artifactstore::db::connect(&url).await.unwrap();
    let (b3, sha): (Vec<Vec<u8>>, Vec<Vec<u8>>) = digests.into_iter().unzip();
    client
        .execute(
            "WITH d AS (SELECT row_number() OVER () AS n, b, s \
                        FROM unnest($1::bytea[], $2::bytea[]) AS t(b, s)), \
                  blobs_in AS (INSERT INTO blobs (blake3, sha256, size, created_at) \
                               SELECT b, s, 64, now() FROM d), \
                  locations_in AS (INSERT INTO storage_locations \
                               (blake3, backend_id, key, status, stored_at) \
                               SELECT b, 'local', 'k', 'present', now() FROM d), \
                  packages_in AS (INSERT INTO packages (id, tenant, producer, subject, \
                               retention_class, status, created_at, created_position, \
                               finalized_at, manifest_digest, file_count, total_size) \
                               SELECT md5(n::text)::uuid, 'default', 'bench', 'b', 'ephemeral', \
                                      'finalized', now() - interval '30 days', n, \
                                      now() - interval '8 days', 'blake3:x', 1, 64 FROM d), \
                  retention_in AS (INSERT INTO retention_state (package_id, tenant, expires_at) \
                               SELECT md5(n::text)::uuid, 'default', now() - interval '1 day' \
                               FROM d) \
             INSERT INTO files (id, tenant, package_id, relative_path, size, media_type, blake3, \
                                created_at, created_position) \
             SELECT md5('f' || n)::uuid, 'default', md5(n::text)::uuid, 'f', 64, \
                    'application/octet-stream', b, now(), n FROM d",
            &[&b3, &sha],
        )
        .await
        .unwrap();
    // Statistics, as autovacuum keeps them on a live database (without them the planner takes
    // the freshly loaded tables for empty).
    client.batch_execute("ANALYZE").await.unwrap();
    let fixture = started.elapsed();

    let started = Instant::now();
    let mut expired = 0;
    loop {
        let batch = registry.expire_due(3600, 1000).await.unwrap().len();
        expired += batch;
        if batch < 1000 {
            break;
        }
    }
    let expire = started.elapsed();
    assert_eq!(expired, count);

    let started = Instant::now();
    let mut collected = 0;
    loop {
        let batch = registry.collect_garbage(0, 1000).await.unwrap().blobs as usize;
        collected += batch;
        if batch < 1000 {
            break;
        }
    }
    let collect = started.elapsed();
    assert_eq!(collected, count);
    let left = std::fs::read_dir(work.join("blobs/blake3"))
        .map(|d| d.count())
        .unwrap_or(0);

    println!("\n{count} due packages, one unique blob each (local backend, fsync on)\n");
    println!("| what | time | rate |");
    println!("|---|---|---|");
    println!("| fixture (SQL + files, not measured) | {fixture:.2?} | |");
    println!(
        "| expire (`expire_due`, batches of 1,000) | {expire:.2?} | **{:.0} packages/s** |",
        count as f64 / expire.as_secs_f64()
    );
    println!(
        "| collect (`collect_garbage`, batches of 1,000) | {collect:.2?} | **{:.0} blobs/s** |",
        count as f64 / collect.as_secs_f64()
    );
    println!("\n(fan-out directories left under blake3/: {left}; empty ones are not removed)");
    drop(client);
    let admin = artifactstore::db::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await;
    cluster.stop();
}

//! Retrieval records' cost: 4 KiB downloads/s from a server that records every read against
//! the same server with records off (`ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS=0`), both started
//! from the release build on one database and one local root, in interleaved rounds (the
//! order alternating). Prints Markdown. Target: records cost <= 5% (ratio >= 0.95x).
//!
//!     cargo bench --bench retrievals
//!
//! Each round is 16 clients each downloading 1,000 times (the 64 files of a finalized
//! package, in turn), with a token, as clients do; a pause after each round lets the records'
//! writer finish (its batches are written within a second) before the next round starts.

mod common;

use common::{Ratio, Server, interleaved};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-retrievals-token";
const CLIENTS: usize = 16;
const PER_CLIENT: usize = 1_000;
const FILES: usize = 64;
const ROUNDS: usize = 7;

fn main() {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-retrievals-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut cluster, url) = common::shared_database(&rt, &work, "retrievals");
    let start = |name: &str, days: &str| {
        let mut cmd = common::serve_command();
        cmd.env("ARTIFACTSTORE_DATABASE_URL", &url)
            .env("ARTIFACTSTORE_DATA_DIR", work.join(name))
            .env("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", work.join("blobs"))
            .env("ARTIFACTSTORE_TOKENS", format!("bench:read+write:{TOKEN}"))
            .env("ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS", days)
            .env("ARTIFACTSTORE_METRICS_LISTEN", "")
            .env("ARTIFACTSTORE_LOG", "warn");
        common::serve(cmd)
    };
    let recorded = start("recorded", "400");
    let unrecorded = start("unrecorded", "0");
    let http = reqwest::Client::new();
    let files = rt.block_on(package_of_small_files(&http, &recorded));

    let round = |server: &Server| {
        let took = rt.block_on(downloads(&http, &server.base, &files));
        std::thread::sleep(Duration::from_secs(1));
        took
    };
    let times = interleaved(
        ROUNDS,
        &mut [&mut || round(&unrecorded), &mut || round(&recorded)],
    );
    let written: i64 = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .query_one("SELECT count(*) FROM retrieval_records", &[])
            .await
            .unwrap()
            .get(0)
    });
    drop((recorded, unrecorded));
    cluster.stop();
    let _ = std::fs::remove_dir_all(&work);

    let count = CLIENTS * PER_CLIENT;
    let rate = |d: &Duration| format!("{:.0}", count as f64 / d.as_secs_f64());
    let rates = |times: &[Duration]| times.iter().map(rate).collect::<Vec<_>>().join(", ");
    let ratio = Ratio::of(&times[0], &times[1]);
    let verdict = if ratio.median >= 0.95 {
        "**met**"
    } else {
        "not met"
    };
    println!("| 4 KiB downloads, {CLIENTS} concurrent clients, {count} per round | rounds (/s) |");
    println!("|---|---|");
    println!(
        "| records off (`ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS=0`) | {} |",
        rates(&times[0])
    );
    println!(
        "| every read recorded (the default) | {} |",
        rates(&times[1])
    );
    println!(
        "\nRecorded vs off: {ratio}; cost {:.1}% (median round); target <= 5% (>= 0.95x): \
         {verdict}. Records written: {written} (of {} downloads recorded).",
        (1.0 - ratio.median) * 100.0,
        count * ROUNDS
    );
}

/// A finalized package of [`FILES`] files of 4 KiB: their download URLs (paths).
async fn package_of_small_files(http: &reqwest::Client, server: &Server) -> Vec<String> {
    let base = &server.base;
    let package: serde_json::Value = http
        .post(format!("{base}/packages"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"producer": "bench", "subject": "retrievals"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = package["id"].as_str().unwrap();
    let mut files = Vec::with_capacity(FILES);
    for i in 0..FILES {
        let mut data = vec![0u8; 4096];
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        data[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        let file: serde_json::Value = http
            .put(format!("{base}/packages/{id}/files/f{i}"))
            .bearer_auth(TOKEN)
            .body(data)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        files.push(format!("/files/{}/download", file["id"].as_str().unwrap()));
    }
    let resp = http
        .post(format!("{base}/packages/{id}/finalize"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "finalize: {}", resp.status());
    files
}

/// [`CLIENTS`] clients each downloading [`PER_CLIENT`] times from `base`: how long it took.
async fn downloads(http: &reqwest::Client, base: &str, files: &[String]) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let http = http.clone();
            let urls: Vec<String> = files.iter().map(|f| format!("{base}{f}")).collect();
            tokio::spawn(async move {
                for i in 0..PER_CLIENT {
                    let resp = http
                        .get(&urls[(c + i) % urls.len()])
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 200);
                    assert_eq!(resp.bytes().await.unwrap().len(), 4096);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

//! HTTP benchmark: the real server (release build, private PostgreSQL with fsync on, local
//! storage) against same-run baselines on the same machine and files. Prints Markdown.
//!
//!     cargo bench --bench http                     # 2 GiB file; BENCH_SIZE_MIB to change
//!     BENCH_ONLY=small cargo bench --bench http    # only the 4 KiB ingests (BENCH_URL: to a
//!                                                  # server already running)
//!     BENCH_ONLY=download cargo bench --bench http # only the download vs nginx
//!     BENCH_ONLY=replicas cargo bench --bench http # 4 KiB ingests: one server vs three
//!
//! - Upload of a large file: raw `curl -T` PUT, and an upload session (create, one PATCH,
//!   complete), vs (c) = `openssl dgst -sha256` + `dd bs=1M conv=fsync` of the same file.
//!   Target >= 0.8x; the server's peak RSS (VmHWM) during them, target < 100 MiB.
//! - Download with `curl -o /dev/null` (file in page cache) vs nginx (`sendfile on`) serving
//!   the same bytes. Target >= 0.9x.
//! - 4 KiB ingests/s with 16 concurrent clients. Target >= 1,000/s. Then, for scale, what
//!   PostgreSQL alone commits on this machine now (`pgbench` on the server's own cluster).
//! - `artifactstore push` of a 1,000-file tree, then the same tree again.
//! - 4 KiB ingests, 16 clients, into one server and into three servers on the same database
//!   and shared local root (each client keeps to one server), in interleaved rounds: that
//!   replicas do not contend (two cores cannot show scaling).

mod common;

use common::{
    Nginx, PgCalibration, Ratio, Server, calibrate_postgres, cpu_time, curl, fastest, interleaved,
    json_field, make_file, mbps, median, status_kib, time,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_artifactstore");

/// Resets the peak RSS counter (writing 5 to clear_refs), so each phase reports its own peak.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn start_server(data: &Path) -> Server {
    let mut cmd = common::serve_command();
    cmd.env("ARTIFACTSTORE_DATA_DIR", data)
        .env("ARTIFACTSTORE_LOG", "warn");
    common::serve(cmd)
}

fn new_package(base: &str, subject: &str) -> String {
    let body = curl(&[
        "-X",
        "POST",
        &format!("{base}/packages"),
        "-H",
        "content-type: application/json",
        "-d",
        &format!("{{\"producer\":\"bench\",\"subject\":\"{subject}\"}}"),
    ]);
    json_field(&body, "id")
}

fn main() {
    let size_mib: u64 = std::env::var("BENCH_SIZE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let size = size_mib << 20;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("small") {
        // Only the 4 KiB ingests (for working on that path). A fresh directory each run, kept
        // afterwards: creating files just after deleting many costs ext4 more (it skips
        // recently freed inodes), which made back-to-back runs differ by up to 40%. Remove
        // target/tmp/bench-http-small-* when done.
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bench-http-small-{}", std::process::id()));
        // BENCH_URL: load a server that is already running (e.g. one being profiled).
        let (server, base) = match std::env::var("BENCH_URL") {
            Ok(url) => (None, url),
            Err(_) => {
                let server = start_server(&work.join("data"));
                let base = server.base.clone();
                (Some(server), base)
            }
        };
        let (count, took) = small_ingests(&base, 0);
        println!(
            "| 4 KiB ingests, 16 concurrent clients ({count}) | **{:.0}/s** |",
            count as f64 / took.as_secs_f64()
        );
        if server.is_some() {
            print_calibration(&calibrate_postgres(&work.join("data")));
        }
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("replicas") {
        replicas_only();
        return;
    }
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-http");
    if std::env::var("BENCH_ONLY").as_deref() == Ok("download") {
        download_only(&work, size);
        return;
    }
    let _ = std::fs::remove_dir_all(work.join("data"));
    std::fs::create_dir_all(&work).unwrap();
    let input = work.join("input.bin");
    make_file(&input, size);
    let copy = work.join("copy.bin");

    let server = start_server(&work.join("data"));
    let base = server.base.clone();
    let pid = server.child.id();

    // Uploads against baseline (c), hash then durable copy, in interleaved rounds: the cost
    // of fresh page-cache pages in this VM varies from one 2 GiB write to the next by several
    // times (0.25-3 s per GiB, for dd as for us), so only neighbours in time compare fairly.
    time(Command::new("cat").arg(&input).stdout(Stdio::null()));
    let (mut sha_times, mut dd_times) = (Vec::new(), Vec::new());
    let mut baseline_run = || {
        let _ = std::fs::remove_file(&copy);
        let sha = time(
            Command::new("openssl")
                .args(["dgst", "-sha256"])
                .arg(&input),
        );
        let dd = time(
            Command::new("dd")
                .arg(format!("if={}", input.display()))
                .arg(format!("of={}", copy.display()))
                .args(["bs=1M", "conv=fsync", "status=none"]),
        );
        let _ = std::fs::remove_file(&copy);
        sha_times.push(sha);
        dd_times.push(dd);
        sha + dd
    };
    // The stored blob (removed before each of our uploads, so none is a dedup) and a file
    // holding it.
    let stored: std::cell::RefCell<Option<(PathBuf, String)>> = Default::default();
    let forget_blob = || {
        if let Some((blob, _)) = &*stored.borrow() {
            let _ = std::fs::remove_file(blob);
        }
    };
    let remember = |body: &str| {
        let file: serde_json::Value = serde_json::from_str(body).unwrap();
        let blake3 = file["digests"]["blake3"].as_str().unwrap();
        let blob = work
            .join("data/blobs/blake3")
            .join(&blake3[0..2])
            .join(&blake3[2..4])
            .join(blake3);
        *stored.borrow_mut() = Some((blob, file["id"].as_str().unwrap().to_owned()));
    };
    // One timed upload into a new package: `send` uploads into it and returns the file.
    let upload = |subject: &str, send: &dyn Fn(&str) -> String| {
        forget_blob();
        let package = new_package(&base, subject);
        reset_peak(pid);
        let start = Instant::now();
        let file = send(&package);
        let took = start.elapsed();
        remember(&file);
        (took, status_kib(pid, "VmHWM:"))
    };
    let (mut put_rss, mut session_rss) = (0, 0);
    let mut put_run = || {
        let (took, rss) = upload("put", &|package| {
            curl(&[
                "-T",
                input.to_str().unwrap(),
                &format!("{base}/packages/{package}/files/big.bin"),
            ])
        });
        put_rss = put_rss.max(rss);
        took
    };
    // Upload session: create, one PATCH of the whole file, complete.
    let mut session_run = || {
        let (took, rss) = upload("session", &|package| {
            let session = curl(&[
                "-X",
                "POST",
                &format!("{base}/uploads"),
                "-H",
                "content-type: application/json",
                "-d",
                &format!(
                    "{{\"package_id\":\"{package}\",\"relative_path\":\"big.bin\",\"size\":{size}}}"
                ),
            ]);
            let url = format!("{base}{}", json_field(&session, "upload_url"));
            curl(&[
                "-X",
                "PATCH",
                "-T",
                input.to_str().unwrap(),
                "-H",
                &format!("Content-Range: bytes 0-{}/{size}", size - 1),
                &url,
            ]);
            curl(&["-X", "POST", &format!("{url}/complete")])
        });
        session_rss = session_rss.max(rss);
        took
    };
    let uploads = interleaved(
        UPLOAD_ROUNDS,
        &mut [&mut baseline_run, &mut put_run, &mut session_run],
    );
    let (sha, dd) = (fastest(&sha_times), fastest(&dd_times));
    let (baselines, puts, sessions) = (&uploads[0], &uploads[1], &uploads[2]);
    let (blob, file_id) = stored.borrow().clone().expect("an upload stored the file");

    // Download vs nginx serving the same bytes with sendfile.
    time(Command::new("cat").arg(&blob).stdout(Stdio::null()));
    reset_peak(pid);
    let nginx = Nginx::serve_file(&work, &blob);
    let downloads = compare_downloads(&format!("{base}/files/{file_id}/download"), &nginx.url);
    drop(nginx);
    let download_rss = status_kib(pid, "VmHWM:");

    let small: Vec<f64> = (0..SMALL_RUNS)
        .map(|run| {
            let (count, took) = small_ingests(&base, run);
            count as f64 / took.as_secs_f64()
        })
        .collect();
    let calibration = calibrate_postgres(&work.join("data"));

    // push of a 1,000-file tree, twice.
    let tree = work.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    for i in 0..1000 {
        let dir = tree.join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        let mut data = vec![(i % 251) as u8; 4096 + (i * 37) % 60_000];
        data[..8].copy_from_slice(&(i as u64 + 1_000_000).to_le_bytes());
        std::fs::write(dir.join(format!("f{i}.bin")), data).unwrap();
    }
    let push = |subject: &str| {
        time(Command::new(BIN).args(["push"]).arg(&tree).args([
            "--producer",
            "bench",
            "--subject",
            subject,
            "--finalize",
            "--no-progress",
            "--server",
            &base,
        ]))
    };
    let first_push = push("first");
    let second_push = push("second");

    drop(server);
    println!(
        "## HTTP benchmark ({size_mib} MiB file; server: release build, private PostgreSQL with fsync, local storage)\n"
    );
    println!("| what | time | MB/s | ratio | server peak RSS |");
    println!("|---|---|---|---|---|");
    println!(
        "| (a) `openssl dgst -sha256` | {sha:.2?} | {:.0} | | |",
        mbps(size, sha)
    );
    println!(
        "| (b) `dd bs=1M conv=fsync` | {dd:.2?} | {:.0} | | |",
        mbps(size, dd)
    );
    let baseline = fastest(baselines);
    println!(
        "| (c) = (a) then (b) | {baseline:.2?} | {:.0} | 1.00x | |",
        mbps(size, baseline)
    );
    let put = fastest(puts);
    println!(
        "| upload, raw PUT (`curl -T`) | {put:.2?} | {:.0} | {} (c) | {} MiB |",
        mbps(size, put),
        Ratio::of(baselines, puts),
        put_rss / 1024
    );
    let session = fastest(sessions);
    println!(
        "| upload session (create, PATCH, complete) | {session:.2?} | {:.0} | {} (c) | {} MiB |",
        mbps(size, session),
        Ratio::of(baselines, sessions),
        session_rss / 1024
    );
    downloads.print_rows(size, &format!(" {} MiB |", download_rss / 1024));
    println!();
    println!("| small files | result |");
    println!("|---|---|");
    println!(
        "| 4 KiB ingests, 16 concurrent clients, {SMALL_RUNS} runs of {} | {}: median **{:.0}/s** |",
        SMALL_CLIENTS * SMALL_PER_CLIENT,
        small
            .iter()
            .map(|r| format!("{r:.0}/s"))
            .collect::<Vec<_>>()
            .join(", "),
        median(&small)
    );
    print_calibration(&calibration);
    println!(
        "| `push` of 1,000 files (first time) | {first_push:.2?} = {:.0} files/s |",
        1000.0 / first_push.as_secs_f64()
    );
    println!(
        "| `push` of the same tree again (server holds the bytes) | {second_push:.2?} = {:.0} files/s ({:.1}x faster) |",
        1000.0 / second_push.as_secs_f64(),
        first_push.as_secs_f64() / second_push.as_secs_f64()
    );
}

/// Only the download comparison (for working on that path): one raw PUT, then ours and
/// nginx's downloads of the stored file (see [`compare_downloads`]).
fn download_only(work: &Path, size: u64) {
    let _ = std::fs::remove_dir_all(work.join("data"));
    std::fs::create_dir_all(work).unwrap();
    let input = work.join("input.bin");
    make_file(&input, size);
    let server = start_server(&work.join("data"));
    let base = server.base.clone();
    let package = new_package(&base, "download");
    let body = curl(&[
        "-T",
        input.to_str().unwrap(),
        &format!("{base}/packages/{package}/files/big.bin"),
    ]);
    let file: serde_json::Value = serde_json::from_str(&body).unwrap();
    let blake3 = file["digests"]["blake3"].as_str().unwrap();
    let blob = work
        .join("data/blobs/blake3")
        .join(&blake3[0..2])
        .join(&blake3[2..4])
        .join(blake3);
    let url = format!("{base}/files/{}/download", file["id"].as_str().unwrap());
    time(Command::new("cat").arg(&blob).stdout(Stdio::null()));
    let nginx = Nginx::serve_file(work, &blob);
    let cpu_before = cpu_time(server.child.id());
    let downloads = compare_downloads(&url, &nginx.url);
    let cpu = cpu_time(server.child.id()) - cpu_before;
    downloads.print_rows(size, "");
    println!(
        "\nOur server's CPU time (user + system): {:.0} ms per GiB downloaded.",
        cpu.as_secs_f64() * 1000.0 / (DOWNLOAD_ROUNDS as f64 * size as f64 / (1u64 << 30) as f64)
    );
}

/// Rounds of the upload comparison (each uploads the file twice and copies it once).
const UPLOAD_ROUNDS: usize = 3;

/// Rounds of the download comparison.
const DOWNLOAD_ROUNDS: usize = 5;

/// Our downloads and nginx's of the same bytes, in interleaved rounds.
struct Downloads {
    ours: Vec<Duration>,
    theirs: Vec<Duration>,
}

/// Downloads the file from `ours` and from `theirs` (nginx) in [`DOWNLOAD_ROUNDS`]
/// interleaved rounds (see [`interleaved`]).
fn compare_downloads(ours: &str, theirs: &str) -> Downloads {
    let get = |url: &str| {
        time(
            Command::new("curl")
                .args(["-sS", "--fail", "-o", "/dev/null"])
                .arg(url),
        )
    };
    let mut times = interleaved(
        DOWNLOAD_ROUNDS,
        &mut [&mut || get(theirs), &mut || get(ours)],
    );
    Downloads {
        ours: times.pop().unwrap(),
        theirs: times.pop().unwrap(),
    }
}

impl Downloads {
    /// The two table rows (best times, and the ratio). `extra` ends our row (e.g. a peak RSS
    /// column).
    fn print_rows(&self, size: u64, extra: &str) {
        let (ours, theirs) = (fastest(&self.ours), fastest(&self.theirs));
        let pad = if extra.is_empty() { "" } else { " |" };
        println!(
            "| download, nginx `sendfile on` (best of {DOWNLOAD_ROUNDS}) | {theirs:.2?} | {:.0} | 1.00x |{pad}",
            mbps(size, theirs)
        );
        println!(
            "| download, ours (`curl -o /dev/null`, best of {DOWNLOAD_ROUNDS}) | {ours:.2?} | {:.0} | {} nginx |{extra}",
            mbps(size, ours),
            Ratio::of(&self.theirs, &self.ours),
        );
    }
}

/// The calibration rows of the small-files table (see [`calibrate_postgres`]).
fn print_calibration(pg: &PgCalibration) {
    println!(
        "| for scale: PostgreSQL alone on this machine now (`pgbench`, single-row INSERTs, fsync on) | {:.0}/s with 1 client, {:.0}/s with 16 |",
        pg.one_client, pg.sixteen_clients
    );
}

/// Concurrent clients of the 4 KiB ingest run, and files each.
const SMALL_CLIENTS: usize = 16;
const SMALL_PER_CLIENT: usize = 250;
/// Runs of it in the full benchmark (each in new packages), reported with their median.
const SMALL_RUNS: usize = 3;

/// 4 KiB ingests with 16 concurrent clients: how many, and how long they took. Every file's
/// bytes are new to the server (they carry `run`, the process id and the file's number), so no
/// run is a dedup of an earlier one (which would write no blob and measure less).
fn small_ingests(base: &str, run: usize) -> (usize, Duration) {
    small_ingests_over(&[base.to_owned()], run)
}

/// [`small_ingests`] with client `c` sending to `bases[c % bases.len()]`.
fn small_ingests_over(bases: &[String], run: usize) -> (usize, Duration) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut tasks = Vec::new();
        let start = Instant::now();
        for c in 0..SMALL_CLIENTS {
            let http = http.clone();
            let base = bases[c % bases.len()].clone();
            let package = new_package(&base, &format!("small {c} {run}"));
            tasks.push(tokio::spawn(async move {
                for i in 0..SMALL_PER_CLIENT {
                    let mut data = vec![0u8; 4096];
                    data[..8].copy_from_slice(&((c * SMALL_PER_CLIENT + i) as u64).to_le_bytes());
                    data[8..16].copy_from_slice(&(run as u64).to_le_bytes());
                    data[16..20].copy_from_slice(&std::process::id().to_le_bytes());
                    let resp = http
                        .put(format!("{base}/packages/{package}/files/f{i}"))
                        .body(data)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 201);
                }
            }));
        }
        let _ = start;
        let start = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        (SMALL_CLIENTS * SMALL_PER_CLIENT, start.elapsed())
    })
}

const REPLICA_ROUNDS: usize = 5;

/// 4 KiB ingests (16 clients) into one server at its defaults, into three servers set as
/// OPERATOR.md says for a fleet (`ARTIFACTSTORE_GROUP_COMMITTERS=1`), and into three at the
/// defaults, on the same database and the same local root (one machine: the root is shared by
/// being one directory), in interleaved rounds (the order rotating); every server keeps a data
/// directory of its own, and all seven run throughout.
fn replicas_only() {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-http-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut cluster, url) = common::shared_database(&rt, &work, "replicas");
    let start = |i: usize, committers: &str| {
        let mut cmd = common::serve_command();
        cmd.env("ARTIFACTSTORE_DATABASE_URL", &url)
            .env("ARTIFACTSTORE_DATA_DIR", work.join(format!("data-{i}")))
            .env("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", work.join("blobs"))
            .env("ARTIFACTSTORE_GROUP_COMMITTERS", committers)
            .env("ARTIFACTSTORE_LOG", "warn");
        common::serve(cmd)
    };
    let single = [start(0, "2")];
    let fleet: Vec<Server> = (1..4).map(|i| start(i, "1")).collect();
    let defaults: Vec<Server> = (4..7).map(|i| start(i, "2")).collect();
    let groups: [(&str, Vec<String>); 3] = [
        (
            "one server (defaults)",
            single.iter().map(|s| s.base.clone()).collect(),
        ),
        (
            "three servers, `ARTIFACTSTORE_GROUP_COMMITTERS=1` (the fleet setting)",
            fleet.iter().map(|s| s.base.clone()).collect(),
        ),
        (
            "three servers, defaults (2 committers each)",
            defaults.iter().map(|s| s.base.clone()).collect(),
        ),
    ];
    let mut rates = vec![Vec::new(); groups.len()];
    for round in 0..REPLICA_ROUNDS {
        for k in 0..groups.len() {
            let g = (round + k) % groups.len();
            let (count, took) = small_ingests_over(&groups[g].1, round * groups.len() + g);
            rates[g].push(count as f64 / took.as_secs_f64());
        }
    }
    drop((single, fleet, defaults));
    cluster.stop();
    let _ = std::fs::remove_dir_all(&work);
    let list = |values: &[f64], unit: &str| {
        values
            .iter()
            .map(|r| format!("{r:.2}{unit}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| 4 KiB ingests, 16 concurrent clients (spread evenly) | rounds (/s) | median | vs one server, per round |"
    );
    println!("|---|---|---|---|");
    for (g, (name, _)) in groups.iter().enumerate() {
        let ratios: Vec<f64> = rates[0].iter().zip(&rates[g]).map(|(a, b)| b / a).collect();
        let versus = if g == 0 {
            String::new()
        } else {
            let m = median(&ratios);
            let verdict = if g == 1 {
                if m >= 1.0 {
                    "; target >= 1.0x: **met**"
                } else {
                    "; target >= 1.0x: not yet met"
                }
            } else {
                ""
            };
            format!("{} (median **{m:.2}x**{verdict})", list(&ratios, "x"))
        };
        let rounded: Vec<String> = rates[g].iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {name} | {} | {:.0}/s | {versus} |",
            rounded.join(", "),
            median(&rates[g])
        );
    }
}

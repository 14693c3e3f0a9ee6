//! Soak: the real server (release build, private PostgreSQL, local storage) under mixed load on
//! loopback for a while, its memory and descriptors sampled every 10 s. Not a speed target:
//! it shows that nothing leaks and nothing fails but the refusals a client asks for.
//!
//!     cargo bench --bench soak                   # 20 minutes
//!     BENCH_SOAK_MINUTES=2 cargo bench --bench soak
//!
//! The load, all at once: uploads of every size (4 KiB to 32 MiB, raw PUT and multipart),
//! downloads (whole and ranged), long-polls (`wait=5`), requests the client abandons (bodies
//! cut off mid-upload, downloads dropped mid-way), upload sessions left open after a chunk,
//! and packages finalized. Prints a Markdown report: the samples, the answers by status, and
//! whether memory and descriptors stayed bounded.
//!
//! Contents repeat (`DISTINCT` of each size), so the store's disk use is bounded by dedup and
//! not by the run's length: a long run must not fill the machine's disk.

mod common;

use common::Server;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Distinct contents per upload size: the store holds at most this many of each.
const DISTINCT: u64 = 24;
/// Files remembered for downloads (a ring: older ones are forgotten).
const REMEMBERED: usize = 4096;

fn start_server(data: &Path) -> Server {
    let mut cmd = common::serve_command();
    cmd.env("ARTIFACTSTORE_DATA_DIR", data)
        .env("ARTIFACTSTORE_LOG", "warn")
        // Sessions left open expire within the run, so their sweep is part of the load.
        .env("ARTIFACTSTORE_UPLOAD_TTL_SECONDS", "120")
        .env("ARTIFACTSTORE_MIN_FREE_BYTES", "0");
    common::serve(cmd)
}

/// Answers by status (`abandoned`: the client gave up on purpose; `error`: the request failed
/// without an answer it did not ask for).
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>, Arc<Mutex<Vec<String>>>);

/// The first unexpected answers are kept whole, to say what they were.
const DETAILS: usize = 20;

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    fn detail(details: &Mutex<Vec<String>>, what: String) {
        let mut details = details.lock().unwrap();
        if details.len() < DETAILS {
            details.push(what);
        }
    }

    fn status(
        &self,
        kind: &str,
        result: reqwest::Result<reqwest::Response>,
    ) -> Option<reqwest::Response> {
        match result {
            Ok(resp) if resp.status().as_u16() >= 400 => {
                let status = resp.status().as_u16();
                self.add(format!("{kind} {status}"));
                let (details, kind) = (self.1.clone(), kind.to_owned());
                tokio::spawn(async move {
                    let body = resp.text().await.unwrap_or_default();
                    Tally::detail(&details, format!("{kind} {status}: {body}"));
                });
                None
            }
            Ok(resp) => {
                self.add(format!("{kind} {}", resp.status().as_u16()));
                Some(resp)
            }
            Err(e) => {
                self.add(format!("{kind} error: {}", short(&e)));
                Tally::detail(&self.1, format!("{kind} error: {e:?}"));
                None
            }
        }
    }
}

fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "other".into()
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

struct Load {
    http: reqwest::Client,
    base: String,
    tally: Tally,
    files: Mutex<Vec<(String, u64)>>,
    stop: AtomicBool,
    counter: AtomicU64,
}

impl Load {
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    async fn package(&self) -> Option<String> {
        let resp = self.tally.status(
            "create",
            self.http
                .post(format!("{}/packages", self.base))
                .json(&serde_json::json!({"producer": "soak", "subject": "s"}))
                .send()
                .await,
        )?;
        let body: serde_json::Value = resp.json().await.ok()?;
        Some(body["id"].as_str()?.to_owned())
    }

    /// Uploads of every size into a package, then finalizes it.
    async fn uploader(&self, seed: u64) {
        while !self.stop.load(Ordering::Relaxed) {
            let Some(package) = self.package().await else {
                continue;
            };
            for _ in 0..8 {
                let n = self.next();
                let size = match n % 10 {
                    0..=5 => 4096,
                    6 | 7 => 256 << 10,
                    8 => 4 << 20,
                    _ => 32 << 20,
                };
                let data = bytes(size, (seed + n) % DISTINCT);
                let url = format!("{}/packages/{package}/files/f{n}.bin", self.base);
                let resp = if n.is_multiple_of(3) {
                    let form = reqwest::multipart::Form::new().part(
                        "file",
                        reqwest::multipart::Part::bytes(data).file_name(format!("f{n}.bin")),
                    );
                    self.tally.status(
                        "upload",
                        self.http
                            .post(format!("{}/packages/{package}/files", self.base))
                            .multipart(form)
                            .send()
                            .await,
                    )
                } else {
                    self.tally
                        .status("upload", self.http.put(url).body(data).send().await)
                };
                if let Some(resp) = resp
                    && let Ok(file) = resp.json::<serde_json::Value>().await
                    && let Some(id) = file["id"].as_str()
                {
                    let mut files = self.files.lock().unwrap();
                    if files.len() == REMEMBERED {
                        files.remove(0);
                    }
                    files.push((id.to_owned(), size as u64));
                }
            }
            self.tally.status(
                "finalize",
                self.http
                    .post(format!("{}/packages/{package}/finalize", self.base))
                    .send()
                    .await,
            );
        }
    }

    fn pick(&self, n: u64) -> Option<(String, u64)> {
        let files = self.files.lock().unwrap();
        (!files.is_empty()).then(|| files[n as usize % files.len()].clone())
    }

    /// Whole and ranged downloads, some dropped mid-way.
    async fn downloader(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let n = self.next();
            let Some((id, size)) = self.pick(n) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut req = self.http.get(format!("{}/files/{id}/download", self.base));
            if n.is_multiple_of(4) && size > 10 {
                req = req.header("Range", format!("bytes=1-{}", size / 2));
            }
            let Some(resp) = self.tally.status("download", req.send().await) else {
                continue;
            };
            let mut body = resp.bytes_stream();
            let mut read = 0usize;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(chunk) => read += chunk.len(),
                    Err(_) => {
                        self.tally.add("download body error");
                        break;
                    }
                }
                if n.is_multiple_of(5) && read > 64 << 10 {
                    self.tally.add("download abandoned");
                    break;
                }
            }
        }
    }

    /// Long-polls of the event stream, following it.
    async fn tailer(&self) {
        let mut since = 0i64;
        while !self.stop.load(Ordering::Relaxed) {
            let resp = self.tally.status(
                "events",
                self.http
                    .get(format!(
                        "{}/events?since={since}&wait=5&limit=1000",
                        self.base
                    ))
                    .header("Accept", "application/json")
                    .send()
                    .await,
            );
            if let Some(resp) = resp
                && let Ok(page) = resp.json::<serde_json::Value>().await
                && let Some(next) = page["next_since"].as_i64()
            {
                since = next;
            }
        }
    }

    /// Uploads cut off mid-body, and upload sessions left open after one chunk.
    async fn quitter(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let Some(package) = self.package().await else {
                continue;
            };
            let n = self.next();
            // A body that stops after 1 MiB of 8 MiB announced: the client goes away.
            let data = bytes(1 << 20, n % DISTINCT);
            let stream = futures::stream::iter([Ok::<_, std::io::Error>(data)])
                .chain(futures::stream::pending());
            let cut = self
                .http
                .put(format!("{}/packages/{package}/files/cut{n}.bin", self.base))
                .header("Content-Length", 8 << 20)
                .body(reqwest::Body::wrap_stream(stream))
                .timeout(Duration::from_millis(300))
                .send()
                .await;
            match cut {
                Err(e) if e.is_timeout() => self.tally.add("upload abandoned"),
                other => {
                    self.tally.status("cut upload", other);
                }
            }
            // A session that gets one chunk and is never heard from again.
            let session = self.tally.status(
                "session",
                self.http
                    .post(format!("{}/uploads", self.base))
                    .json(&serde_json::json!({
                        "package_id": package,
                        "relative_path": format!("open{n}.bin"),
                        "size": 2 << 20,
                    }))
                    .send()
                    .await,
            );
            if let Some(session) = session
                && let Ok(session) = session.json::<serde_json::Value>().await
                && let Some(id) = session["id"].as_str()
            {
                self.tally.status(
                    "chunk",
                    self.http
                        .patch(format!("{}/uploads/{id}", self.base))
                        .header(
                            "Content-Range",
                            format!("bytes 0-{}/{}", (1 << 20) - 1, 2 << 20),
                        )
                        .body(bytes(1 << 20, (n + 1) % DISTINCT))
                        .send()
                        .await,
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes under `dir` (the store's data directory: blobs, spool, and the private cluster).
fn disk_use(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_use(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() {
    let minutes: u64 = std::env::var("BENCH_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(20);
    // Under target/, not /tmp: a run's data is easy to find and to remove.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&root).expect("target/tmp");
    let work = tempfile::Builder::new()
        .prefix("bench-soak-")
        .tempdir_in(&root)
        .expect("work dir");
    let server = start_server(work.path());
    let pid = server.child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = Arc::new(Load {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client"),
        base: server.base.clone(),
        tally: Tally::default(),
        files: Mutex::default(),
        stop: AtomicBool::new(false),
        counter: AtomicU64::new(0),
    });
    let samples = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..4 {
            let load = load.clone();
            tasks.push(tokio::spawn(async move { load.uploader(i).await }));
        }
        for _ in 0..4 {
            let load = load.clone();
            tasks.push(tokio::spawn(async move { load.downloader().await }));
        }
        for _ in 0..16 {
            let load = load.clone();
            tasks.push(tokio::spawn(async move { load.tailer().await }));
        }
        for _ in 0..2 {
            let load = load.clone();
            tasks.push(tokio::spawn(async move { load.quitter().await }));
        }
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed() < Duration::from_secs(minutes * 60) {
            tokio::time::sleep(Duration::from_secs(10)).await;
            samples.push((
                started.elapsed().as_secs(),
                common::status_kib(pid, "VmRSS:"),
                open_fds(pid),
                disk_use(work.path()),
            ));
        }
        load.stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        samples
    });
    // Bounded: the second half's peaks are no higher than the first half's by more than a
    // margin (a leak grows with time; caches and pools reach their size early).
    let half = samples.len() / 2;
    let peak = |s: &[(u64, u64, usize, u64)]| {
        (
            s.iter().map(|x| x.1).max().unwrap_or(0),
            s.iter().map(|x| x.2).max().unwrap_or(0),
        )
    };
    let (rss_first, fds_first) = peak(&samples[..half.max(1)]);
    let (rss_second, fds_second) = peak(&samples[half.max(1)..]);
    println!("## Soak: {minutes} minutes of mixed load");
    println!();
    println!("| t (s) | server RSS (MiB) | open descriptors | data on disk (MiB) |");
    println!("|---|---|---|---|");
    for (t, rss, fds, disk) in &samples {
        println!(
            "| {t} | {:.1} | {fds} | {} |",
            *rss as f64 / 1024.0,
            disk >> 20
        );
    }
    println!();
    println!("| answers | count |");
    println!("|---|---|");
    let tally = load.tally.0.lock().unwrap();
    for (what, count) in tally.iter() {
        println!("| {what} | {count} |");
    }
    let unexpected: u64 = tally
        .iter()
        .filter(|(what, _)| what.contains("error") || what.contains(" 4") || what.contains(" 5"))
        .map(|(_, n)| n)
        .sum();
    let details = load.tally.1.lock().unwrap();
    if !details.is_empty() {
        println!();
        println!("Unexpected answers (the first {DETAILS}):");
        println!();
        for detail in details.iter() {
            println!("- {}", detail.replace('\n', " "));
        }
    }
    println!();
    println!(
        "peak RSS first half {:.1} MiB, second half {:.1} MiB; peak descriptors {fds_first} then \
         {fds_second}; unexpected answers: {unexpected}",
        rss_first as f64 / 1024.0,
        rss_second as f64 / 1024.0
    );
    let bounded = rss_second <= rss_first + 64 * 1024 && fds_second <= fds_first + 64;
    println!(
        "{}",
        if bounded && unexpected == 0 {
            "bounded, no unexpected answer"
        } else {
            "NOT bounded, or unexpected answers: see above"
        }
    );
    drop(server);
}

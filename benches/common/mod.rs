//! Helpers shared by the benchmarks (`mod common;` in each bench).
#![allow(dead_code)] // each bench uses a subset

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs a command to completion (it must succeed) and returns how long it took.
pub fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// The fastest of `runs` measurements (the least disturbed on a shared machine).
pub fn best(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().expect("at least one run")
}

/// Runs each of `runs` once per round for `rounds` rounds, rotating their order every round,
/// so that the machine's drift (±30% within an hour here) hits all of them alike and each
/// round compares neighbours in time. Returns each run's times, in `runs` order.
pub fn interleaved(rounds: usize, runs: &mut [&mut dyn FnMut() -> Duration]) -> Vec<Vec<Duration>> {
    let mut times = vec![Vec::with_capacity(rounds); runs.len()];
    for round in 0..rounds {
        for i in 0..runs.len() {
            let which = (i + round) % runs.len();
            times[which].push(runs[which]());
        }
    }
    times
}

/// How `ours` compares with `baseline` over the rounds of [`interleaved`]: best against best,
/// and the median and range of the rounds' ratios (baseline time / our time: above 1 is
/// faster than the baseline).
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub best: f64,
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Ratio {
    pub fn of(baseline: &[Duration], ours: &[Duration]) -> Ratio {
        let fastest = |d: &[Duration]| d.iter().min().expect("at least one round").as_secs_f64();
        let mut rounds: Vec<f64> = baseline
            .iter()
            .zip(ours)
            .map(|(b, o)| b.as_secs_f64() / o.as_secs_f64())
            .collect();
        rounds.sort_by(f64::total_cmp);
        Ratio {
            best: fastest(baseline) / fastest(ours),
            median: median(&rounds),
            low: rounds[0],
            high: rounds[rounds.len() - 1],
        }
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "**{:.2}x** best vs best; rounds: median **{:.2}x**, {:.2}-{:.2}x",
            self.best, self.median, self.low, self.high
        )
    }
}

/// The median of sorted or unsorted values (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The fastest of `times`.
pub fn fastest(times: &[Duration]) -> Duration {
    *times.iter().min().expect("at least one run")
}

/// Throughput in MB/s (10^6 bytes per second).
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Writes `size` bytes of pseudo-random data (incompressible, deterministic) unless a file of
/// that size is already there.
pub fn make_file(path: &Path, size: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e3779b97f4a7c15u64;
    for _ in 0..size >> 20 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

/// CPU time (user + system, every thread) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    let ticks: u64 = fields.iter().sum();
    // USER_HZ is 100 on every Linux architecture we run on.
    Duration::from_millis(ticks * 10)
}

/// A `/proc/<pid>/status` value in KiB: `VmRSS:` (now) or `VmHWM:` (peak).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A server process of ours, stopped with SIGTERM when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// `artifactstore serve` on a free loopback port, taking files up to 8 GiB.
pub fn serve_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--max-file-size",
        "8GiB",
    ]);
    cmd
}

/// Spawns `cmd` (an `artifactstore serve --listen 127.0.0.1:0 ...`) and waits for the address
/// it prints.
pub fn serve(mut cmd: Command) -> Server {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the server's address");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("server address")
        .to_owned();
    Server { child, base }
}

/// `curl -sS --fail-with-body ARGS`; returns the body (it must succeed).
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 body")
}

/// A top-level field of a JSON body, as text.
pub fn json_field(body: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    v[field]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v[field].to_string())
}

/// A registry on a fresh database of a private cluster under `work/pg` (durability on, like
/// production) with the local backend under `work/blobs`.
pub struct BenchRegistry {
    pub cluster: artifactstore::db::cluster::ManagedCluster,
    /// The database's name, and a URL to it.
    pub db: String,
    pub url: String,
    pub store: std::sync::Arc<artifactstore::storage::local::LocalStore>,
    pub registry: artifactstore::Registry,
}

pub async fn bench_registry(work: &Path, pool_size: usize) -> BenchRegistry {
    use artifactstore::db::cluster::{ClusterOptions, ManagedCluster};
    let cluster = ManagedCluster::start_or_reuse(ClusterOptions {
        cluster_dir: None,
        dir: work.join("pg"),
        unsafe_fast: false,
    })
    .await
    .expect("start the private cluster");
    let db = format!("bench_{}", std::process::id());
    cluster
        .ensure_database(&db)
        .await
        .expect("create the database");
    let url = cluster.url(&db);
    artifactstore::db::migrate(&url).await.expect("migrate");
    let store = std::sync::Arc::new(
        artifactstore::storage::local::LocalStore::open("local", work.join("blobs"))
            .expect("open the local store"),
    );
    let registry = artifactstore::Registry::new(
        artifactstore::db::pool(&url, pool_size).expect("pool"),
        artifactstore::storage::Backends::single(store.clone()),
    );
    BenchRegistry {
        cluster,
        db,
        url,
        store,
        registry,
    }
}

/// What PostgreSQL alone does on this machine in this run: single-row INSERT transactions per
/// second (fsync on) with 1 and with 16 clients, measured by `pgbench` on the private cluster
/// under `data` (the server's, running). The 4 KiB ingest target is stated against it ("PostgreSQL
/// alone commits ~7,000 single-row transactions/s here"), and this machine's speed varies
/// from day to day, so each report says what the machine did that day.
pub struct PgCalibration {
    pub one_client: f64,
    pub sixteen_clients: f64,
}

pub fn calibrate_postgres(data: &Path) -> PgCalibration {
    use artifactstore::db::cluster::{ClusterOptions, ManagedCluster, find_server_binaries};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, url) = rt.block_on(async {
        let cluster = ManagedCluster::start_or_reuse(ClusterOptions {
            cluster_dir: None,
            dir: data.to_owned(),
            unsafe_fast: false,
        })
        .await
        .expect("attach to the server's private cluster");
        cluster
            .ensure_database("calibration")
            .await
            .expect("create the calibration database");
        let url = cluster.url("calibration");
        let client = artifactstore::db::connect(&url).await.unwrap();
        client
            .batch_execute(
                "DROP TABLE IF EXISTS rows; \
                 CREATE TABLE rows (id bigserial PRIMARY KEY, body text NOT NULL)",
            )
            .await
            .unwrap();
        (cluster, url)
    });
    let script = data.join("calibration.sql");
    std::fs::write(&script, "INSERT INTO rows (body) VALUES ('x');\n").unwrap();
    // Beside the server binaries, else Debian's wrapper on PATH.
    let pgbench = Some(find_server_binaries().unwrap().join("pgbench"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "pgbench".into());
    let tps = |clients: usize| -> f64 {
        let out = Command::new(&pgbench)
            .args(["-n", "-T", "3", "-j"])
            .arg(clients.min(2).to_string())
            .arg("-c")
            .arg(clients.to_string())
            .arg("-f")
            .arg(&script)
            .arg(&url)
            .output()
            .expect("run pgbench");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "pgbench printed no rate: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let calibration = PgCalibration {
        one_client: tps(1),
        sixteen_clients: tps(16),
    };
    drop(cluster);
    let _ = std::fs::remove_file(&script);
    calibration
}

/// nginx on a free loopback port (one worker, its files under `dir`); stopped when dropped.
pub struct Nginx {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`, and the served file's path for [`Nginx::serve_file`].
    pub url: String,
}

impl Nginx {
    fn start(dir: &Path, http: &str) -> (Nginx, u16) {
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("nginx.conf");
        let http = http.replace("{port}", &port.to_string());
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 1; pid {pid}; error_log {err} warn;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; {http} }}\n",
                pid = dir.join("nginx.pid").display(),
                err = dir.join("nginx.err").display(),
                tmp = dir.display(),
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        std::thread::sleep(Duration::from_millis(500));
        let url = format!("http://127.0.0.1:{port}");
        (Nginx { child, url }, port)
    }

    /// Serves one file with `sendfile on` (the fastest a web server sends a file).
    pub fn serve_file(work: &Path, blob: &Path) -> Nginx {
        let www = work.join("www");
        std::fs::create_dir_all(&www).unwrap();
        let served = www.join("big.bin");
        let _ = std::fs::remove_file(&served);
        std::fs::hard_link(blob, &served).unwrap_or_else(|_| {
            std::fs::copy(blob, &served).unwrap();
        });
        let (mut nginx, _) = Nginx::start(
            &work.join("nginx"),
            &format!(
                "sendfile on; tcp_nopush on; server {{ listen 127.0.0.1:{{port}}; root {}; }}",
                www.display()
            ),
        );
        // Workers run as nobody: make the tree readable.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&www)
            .status();
        let _ = Command::new("chmod").args(["a+rx"]).arg(work).status();
        nginx.url.push_str("/big.bin");
        nginx
    }

    /// A reverse proxy to `upstream` (`http://host:port`) that does nothing but relay: request
    /// and response bodies stream through in large buffers, the upstream's `Host` is sent.
    /// The cost of one more hop, and nothing else.
    pub fn relay(dir: &Path, upstream: &str) -> Nginx {
        let host = upstream.trim_start_matches("http://").trim_end_matches('/');
        Nginx::start(
            dir,
            &format!(
                "client_max_body_size 0; server {{ listen 127.0.0.1:{{port}}; location / {{ \
                 proxy_pass http://{host}; proxy_set_header Host {host}; proxy_http_version 1.1; \
                 proxy_request_buffering off; proxy_buffering on; proxy_buffers 16 256k; \
                 proxy_buffer_size 256k; proxy_busy_buffers_size 512k; proxy_max_temp_file_size 0; }} }}"
            ),
        )
        .0
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not kill(): a SIGKILLed master leaves its worker running (holding our
        // stdout).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// A private cluster under `work/pg` with the database `name`, migrated, for several servers
/// to share; and the database's URL.
pub fn shared_database(
    rt: &tokio::runtime::Runtime,
    work: &Path,
    name: &str,
) -> (artifactstore::db::cluster::ManagedCluster, String) {
    use artifactstore::db::cluster::{ClusterOptions, ManagedCluster};
    rt.block_on(async {
        let cluster = ManagedCluster::start_or_reuse(ClusterOptions {
            cluster_dir: None,
            dir: work.join("pg"),
            unsafe_fast: false,
        })
        .await
        .expect("start a private cluster");
        cluster.ensure_database(name).await.unwrap();
        let url = cluster.url(name);
        artifactstore::db::migrate(&url).await.unwrap();
        (cluster, url)
    })
}

//! Operating the service: request ids, probes, JSON logs, the metrics listener, and a real
//! Prometheus server scraping the API server and a worker.

use crate::support::{Killed, Server, TestDb, json_of};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKENS: &str = "alpha:read+write:alpha-writer,system:admin:operator";

/// `artifactstore serve` on a random port, on the database at `url`, with `env` (metrics off
/// unless set there), stdout and stderr piped.
fn serve_command(url: &str, data: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("ARTIFACTSTORE_DATABASE_URL", url)
        .env("ARTIFACTSTORE_DATA_DIR", data)
        .env("ARTIFACTSTORE_METRICS_LISTEN", "")
        .env("ARTIFACTSTORE_MIN_FREE_BYTES", "0")
        .env("ARTIFACTSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The base URL a server announces on its first line of stdout.
fn announced(stdout: &mut impl BufRead) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .expect("the server announces its address")
        .to_owned()
}

/// One series' value in a Prometheus text exposition (the sum over series matching every
/// `label="value"` given).
fn sample(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(server: &Server) -> String {
    let url = server.metrics.as_ref().expect("metrics listener on");
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    resp.text().await.unwrap()
}

/// Creates a package, stores a file, deduplicates it, has one refused, downloads it.
async fn traffic(http: &Client, server: &Server, body: &[u8]) -> (String, String) {
    let package = server.create_package(http, "alpha-writer", "ops").await;
    let put = |path: &str, digest: Option<&str>| {
        let mut req = http
            .put(server.url(&format!("/packages/{package}/files/{path}")))
            .bearer_auth("alpha-writer")
            .body(body.to_vec());
        if let Some(d) = digest {
            req = req.query(&[("expected_digest", d)]);
        }
        req.send()
    };
    let stored = json_of(put("a.bin", None).await.unwrap(), StatusCode::CREATED).await;
    json_of(put("b.bin", None).await.unwrap(), StatusCode::CREATED).await;
    let wrong = format!("blake3:{}", "0".repeat(64));
    let refused = put("c.bin", Some(&wrong)).await.unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let file = stored["id"].as_str().unwrap().to_owned();
    let got = http
        .get(server.url(&format!("/files/{file}/download")))
        .bearer_auth("alpha-writer")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], body);
    (package, file)
}

#[tokio::test]
async fn metrics_count_requests_ingests_bytes_events_and_backends() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = Client::new();
    let body = vec![7u8; 100_000];
    traffic(&http, &server, &body).await;
    // A read of the log waits for the numbering of what was committed before it.
    let log = http
        .get(server.url("/events?since=0&wait=0"))
        .bearer_auth("alpha-writer")
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), StatusCode::OK);
    let text = scrape(&server).await;
    let value = |name: &str, labels: &[&str]| sample(&text, name, labels);
    let created = [r#"operation="createPackage""#, r#"status="201""#];
    assert_eq!(value("artifactstore_http_requests_total", &created), 1.0);
    let downloads = [r#"operation="downloadFile""#, r#"status="200""#];
    assert_eq!(value("artifactstore_http_requests_total", &downloads), 1.0);
    assert_eq!(
        value(
            "artifactstore_http_request_duration_seconds_count",
            &[r#"operation="putFile""#]
        ),
        3.0
    );
    assert!(text.contains(
        r#"artifactstore_http_request_duration_seconds_bucket{operation="putFile",le="0.005"}"#
    ));
    for (outcome, n) in [("stored", 1.0), ("deduplicated", 1.0), ("refused", 1.0)] {
        let label = format!(r#"outcome="{outcome}""#);
        assert_eq!(
            value("artifactstore_ingests_total", &[&label]),
            n,
            "{outcome}"
        );
    }
    assert_eq!(value("artifactstore_ingested_bytes_total", &[]), 200_000.0);
    assert_eq!(value("artifactstore_served_bytes_total", &[]), 100_000.0);
    let created_events = [r#"type="v1.package.created""#];
    assert_eq!(
        value("artifactstore_events_committed_total", &created_events),
        1.0
    );
    let ingested_events = [r#"type="v1.file.ingested""#];
    assert_eq!(
        value("artifactstore_events_committed_total", &ingested_events),
        2.0
    );
    assert_eq!(value("artifactstore_events_head_sequence", &[]), 3.0);
    assert_eq!(value("artifactstore_events_unnumbered", &[]), 0.0);
    assert!(
        value(
            "artifactstore_sequencer_passes_total",
            &[r#"outcome="numbered""#]
        ) >= 1.0
    );
    assert_eq!(value("artifactstore_event_listener_up", &[]), 1.0);
    assert!(value("artifactstore_db_pool_connections", &[r#"state="idle""#]) >= 1.0);
    assert_eq!(value("artifactstore_db_pool_max_connections", &[]), 32.0);
    let commits = [
        r#"backend="local""#,
        r#"operation="commit""#,
        r#"outcome="ok""#,
    ];
    assert_eq!(
        value("artifactstore_backend_operations_total", &commits),
        2.0
    );
    assert!(text.contains("artifactstore_backend_operation_duration_seconds_bucket{"));
    assert_eq!(value("artifactstore_upload_sessions", &[]), 0.0);
    assert_eq!(value("artifactstore_long_polls", &[]), 0.0);
    assert!(text.contains("artifactstore_build_info{version=\""));
    // Every series the library declares is described, and ids never become labels.
    for name in artifactstore::metrics::SERIES {
        let counter_or_gauge = format!("# TYPE {name} ");
        assert!(
            text.contains(&counter_or_gauge) || !text.contains(name),
            "{name} has no TYPE line"
        );
    }
    assert!(!text.contains("/packages/"), "a path became a label");

    // The API listener does not serve metrics.
    let resp = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // A quota refusal is counted, by quota.
    json_of(
        http.put(server.url("/tenants/alpha/quota"))
            .bearer_auth("operator")
            .json(&json!({"max_bytes": null, "max_packages": 1, "max_upload_sessions": null}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let resp = http
        .post(server.url("/packages"))
        .bearer_auth("alpha-writer")
        .json(&json!({"producer": "p", "subject": "over"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
    let text = scrape(&server).await;
    let packages = [r#"quota="packages""#];
    assert_eq!(
        sample(&text, "artifactstore_quota_refusals_total", &packages),
        1.0
    );
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_problems_quote_it() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = Client::new();
    // A sane id is kept; on a problem too.
    let resp = http
        .get(server.url("/packages/not-a-uuid"))
        .bearer_auth("alpha-writer")
        .header("X-Request-Id", "trace-me.42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me.42");
    let problem = json_of(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem["request_id"], "trace-me.42");
    // Refused before any handler (no token on a body), with an insane id: a new one.
    let resp = http
        .post(server.url("/packages"))
        .header("X-Request-Id", "<script>alert(1)</script>")
        .json(&json!({"producer": "p", "subject": "s"}))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let problem = json_of(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["request_id"], id.as_str());
    // Unknown routes and successes carry one too, each its own.
    let a = http.get(server.url("/nowhere")).send().await.unwrap();
    let b = http.get(server.url("/livez")).send().await.unwrap();
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
    assert_eq!(json_of(b, StatusCode::OK).await, json!({"status": "live"}));
}

#[tokio::test]
async fn readiness_names_what_is_down_while_liveness_stays_up() {
    let db = TestDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let blobs = root.path().join("blobs");
    let server = Server::start(
        &db,
        &[("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", blobs.to_str().unwrap())],
    );
    let http = Client::new();
    Server::wait_ready(&server.url("/readyz")).await;
    let ready = json_of(
        http.get(server.url("/readyz")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ready, json!({"status": "ready"}));
    std::fs::remove_dir_all(&blobs).unwrap();
    // Answers are reused for a second (probes are anonymous: one check a second at most).
    let deadline = Instant::now() + Duration::from_secs(5);
    let resp = loop {
        let resp = http.get(server.url("/readyz")).send().await.unwrap();
        if resp.status() != StatusCode::OK || Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(resp.headers().contains_key("retry-after"));
    let problem = json_of(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("the default storage backend is unusable"),
        "{detail}"
    );
    assert!(
        !detail.contains("local"),
        "no backend id for anonymous callers: {detail}"
    );
    assert!(!detail.contains("database"), "{detail}");
    // An outage of a dependency must not get the process restarted.
    json_of(
        http.get(server.url("/livez")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    // The metrics listener answers the same probes (for processes without an API).
    let probes = server.metrics.as_ref().unwrap().replace("/metrics", "");
    let resp = reqwest::get(format!("{probes}/readyz")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = reqwest::get(format!("{probes}/livez")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // `artifactstore probe`, for health checks in images without curl: 0, 1, 2.
    let probe = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(["probe", &url, "--timeout-seconds", "5"])
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(probe(server.url("/livez")), Some(0));
    assert_eq!(probe(format!("{probes}/readyz")), Some(1));
    assert_eq!(
        probe(format!("http://127.0.0.1:{}/livez", free_port())),
        Some(2)
    );
}

#[tokio::test]
async fn json_logs_have_numbers_and_the_request_once() {
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("ARTIFACTSTORE_TOKENS", TOKENS),
        ("ARTIFACTSTORE_LOG", "info"),
        ("ARTIFACTSTORE_LOG_FORMAT", "json"),
    ];
    let mut child = serve_command(&db.url, data.path(), &env).spawn().unwrap();
    let base = announced(&mut BufReader::new(child.stdout.take().unwrap()));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let resp = Client::new()
        .post(format!("{base}/packages"))
        .bearer_auth("alpha-writer")
        .header("X-Request-Id", "log-me-1")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&json!({"producer": "p", "subject": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(10);
    let access = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("an access log line");
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            panic!("a log line that is not JSON: {line}");
        };
        if entry["span"]["request_id"] == "log-me-1" && entry["fields"]["status"].is_number() {
            break entry;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(access["fields"]["status"], 201);
    assert!(access["fields"]["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(access["span"]["operation"], "createPackage");
    assert_eq!(access["span"]["tenant"], "alpha");
    assert_eq!(
        access["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "the client's trace id, for finding its requests in the logs"
    );
    assert!(access.get("spans").is_none(), "span data once: {access}");
}

/// A free loopback port (bound, then let go: the caller binds it at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prometheus from Debian's package, scraping `targets` (job name, host:port) every second.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, &str)]) -> Self {
        let binary = "/usr/bin/prometheus";
        assert!(
            std::path::Path::new(binary).exists(),
            "Prometheus is missing: apt-get install prometheus (scripts/test does, as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The result vector of an instant query (empty until Prometheus answers).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let resp = Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await;
        let Ok(resp) = resp else { return Vec::new() };
        let body: Value = resp.json().await.unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of `promql`, once `ok` holds for it (within 60 s).
    async fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql).await;
            let value = result
                .first()
                .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok());
            if let Some(v) = value
                && ok(v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: no acceptable value within 60 s (last: {result:?})"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_server_and_the_worker() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let data = tempfile::tempdir().unwrap();
    let mut worker = Killed(
        Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .arg("worker")
            .env("ARTIFACTSTORE_DATABASE_URL", &db.url)
            .env("ARTIFACTSTORE_DATA_DIR", data.path())
            .env(
                "ARTIFACTSTORE_STORAGE_LOCAL_ROOT",
                server.data.join("blobs"),
            )
            .env("ARTIFACTSTORE_METRICS_LISTEN", "127.0.0.1:0")
            .env("ARTIFACTSTORE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(worker.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let worker_metrics = line.trim().strip_prefix("metrics on ").unwrap().to_owned();
    let host = |url: &str| {
        url.trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_owned()
    };
    let api_target = host(server.metrics.as_ref().unwrap());
    let worker_target = host(&worker_metrics);
    let prometheus = Prometheus::start(&[("api", &api_target), ("worker", &worker_target)]);

    let http = Client::new();
    // Traffic in two rounds with a scrape between them, so that rates see an increase.
    let round = |range: std::ops::Range<usize>| {
        let (http, server) = (&http, &server);
        async move {
            for i in range {
                traffic(http, server, &vec![i as u8; 10_000 + i]).await;
            }
        }
    };
    round(0..2).await;
    prometheus
        .wait_for(
            r#"sum(artifactstore_http_requests_total{job="api",operation="createPackage",status="201"})"#,
            |v| v == 2.0,
        )
        .await;
    round(2..5).await;
    // The counter as scraped, then its rate and a latency quantile from the histogram.
    prometheus
        .wait_for(
            r#"sum(artifactstore_http_requests_total{job="api",operation="createPackage",status="201"})"#,
            |v| v == 5.0,
        )
        .await;
    let rate = prometheus
        .wait_for(
            r#"sum(rate(artifactstore_http_requests_total{job="api",operation="putFile"}[1m]))"#,
            |v| v > 0.0,
        )
        .await;
    assert!(rate.is_finite());
    let p99 = prometheus
        .wait_for(
            r#"histogram_quantile(0.99, sum by (le) (rate(artifactstore_http_request_duration_seconds_bucket{job="api"}[1m])))"#,
            |v| v.is_finite() && v > 0.0,
        )
        .await;
    assert!(p99 < 60.0, "{p99}");
    prometheus
        .wait_for(
            r#"sum(artifactstore_ingests_total{job="api",outcome="deduplicated"})"#,
            |v| v == 5.0,
        )
        .await;
    // The worker's own series: its passes, its pool, its event listener.
    prometheus
        .wait_for(r#"up{job="worker"}"#, |v| v == 1.0)
        .await;
    prometheus
        .wait_for(
            r#"sum(artifactstore_worker_passes_total{job="worker",outcome="ok"})"#,
            |v| v >= 1.0,
        )
        .await;
    prometheus
        .wait_for(r#"artifactstore_event_listener_up{job="worker"}"#, |v| {
            v == 1.0
        })
        .await;
    prometheus
        .wait_for(r#"artifactstore_events_head_sequence{job="worker"}"#, |v| {
            v >= 15.0
        })
        .await;
    // Every query of the Grafana dashboard is one this Prometheus accepts, on real data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/grafana/artifactstore.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut answered = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*");
            let resp: Value = Client::new()
                .get(format!("{}/api/v1/query", prometheus.base))
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                resp["status"], "success",
                "{}: {expr}: {resp}",
                panel["title"]
            );
            if resp["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                answered += 1;
            }
        }
    }
    assert!(answered >= 15, "most panels have data ({answered})");
}

#[tokio::test]
async fn a_metrics_address_given_must_be_free_the_default_may_be_taken() {
    let db = TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let metrics = [("ARTIFACTSTORE_METRICS_LISTEN", address.as_str())];
    let out = serve_command(&db.url, data.path(), &metrics)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on {address} (ARTIFACTSTORE_METRICS_LISTEN"
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no address announced");

    // The default address taken (by this test, or by whatever holds it): metrics are off with a
    // warning, and the server serves.
    let _default = std::net::TcpListener::bind(artifactstore::config::DEFAULT_METRICS_LISTEN);
    let mut child = serve_command(&db.url, data.path(), &[])
        .env_remove("ARTIFACTSTORE_METRICS_LISTEN")
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = announced(&mut stdout);
    let live = reqwest::get(format!("{base}/livez")).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    child.kill().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "", "no metrics address announced");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let _ = child.wait();
    assert!(stderr.contains("metrics are off"), "{stderr}");
}

#[tokio::test]
async fn the_database_password_comes_from_a_secret_file() {
    let db = TestDb::new().await;
    let mut url = url::Url::parse(&db.url).unwrap();
    let password = url
        .password()
        .expect("the test cluster has a password")
        .to_owned();
    let password = percent_encoding::percent_decode_str(&password)
        .decode_utf8()
        .unwrap()
        .into_owned();
    url.set_password(None).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("postgres_password");
    let data = tempfile::tempdir().unwrap();
    let serve = |password_file: &std::path::Path| {
        let password_file = password_file.to_str().unwrap();
        serve_command(
            url.as_str(),
            data.path(),
            &[("ARTIFACTSTORE_DATABASE_PASSWORD_FILE", password_file)],
        )
        .spawn()
        .unwrap()
    };
    // The right password, with the newline an editor leaves: the server serves.
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let mut child = serve(&file);
    let base = announced(&mut BufReader::new(child.stdout.take().unwrap()));
    Server::wait_ready(&format!("{base}/readyz")).await;
    let _ = child.kill();
    let _ = child.wait();
    // A wrong one: start-up fails, and says nothing of the password.
    std::fs::write(&file, "not-the-password\n").unwrap();
    let out = serve(&file).wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    assert!(!stderr.contains(&password), "{stderr}");
}

/// A minimal OTLP/HTTP receiver: keeps every JSON body posted to `/v1/traces`.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let kept = received.clone();
    let endpoint = poem::Route::new().at(
        "/v1/traces",
        poem::post(poem::endpoint::make(move |req: poem::Request| {
            let kept = kept.clone();
            async move {
                assert_eq!(req.content_type(), Some("application/json"));
                let body = req.into_body().into_bytes().await.unwrap();
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice::<Value>(&body).unwrap());
                poem::Response::builder()
                    .content_type("application/json")
                    .body("{}")
            }
        })),
    );
    tokio::spawn(async move {
        let limits = artifactstore::config::HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(10),
            max_connections: 16,
        };
        artifactstore::api::serve::run(
            listener,
            endpoint,
            std::future::pending(),
            Duration::from_secs(1),
            limits,
        )
        .await
        .unwrap();
    });
    (format!("http://{address}"), received)
}

// Multi-threaded: the receiver answers while the test waits for the server to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_the_clients_trace_and_reach_an_otlp_collector() {
    let db = TestDb::new().await;
    let (collector, received) = otlp_receiver().await;
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_OTLP_ENDPOINT", &collector),
        ],
    );
    let http = Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let package = server.create_package(&http, "alpha-writer", "traced").await;
    let resp = http
        .put(server.url(&format!("/packages/{package}/files/t.bin")))
        .bearer_auth("alpha-writer")
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .body(vec![1u8; 2_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // SIGTERM: the last spans are sent before the process exits.
    assert!(server.terminate().success());
    let spans: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|body| {
            body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect();
    let traced: Vec<&Value> = spans
        .iter()
        .filter(|s| s["traceId"].as_str() == Some(trace_id))
        .collect();
    let names: Vec<&str> = traced.iter().filter_map(|s| s["name"].as_str()).collect();
    let request = traced
        .iter()
        .find(|s| s["name"] == "putFile")
        .unwrap_or_else(|| panic!("no request span in {names:?} of {} spans", spans.len()));
    assert_eq!(
        request["parentSpanId"], parent,
        "the client's span is the parent"
    );
    assert_eq!(request["kind"], 2, "a server span");
    // Its database and backend work are spans of the same trace, under it.
    for name in ["db.record", "db.commit", "backend commit"] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    let backend = traced
        .iter()
        .find(|s| s["name"] == "backend commit")
        .unwrap();
    assert_eq!(backend["parentSpanId"], request["spanId"]);
    // A request without a trace context starts a trace of its own.
    assert!(spans.iter().any(|s| s["name"] == "createPackage"
        && s["traceId"].as_str() != Some(trace_id)
        && s["parentSpanId"].as_str().unwrap_or("").is_empty()));
}

/// An s3s-fs server on loopback that keeps the `traceparent` of every request it gets.
async fn recording_s3(
    root: &std::path::Path,
    access: &str,
    secret: &str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access, secret));
    let service = builder.build();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (service, kept) = (service.clone(), kept.clone());
            tokio::spawn(async move {
                let recording = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        if let Some(v) = req.headers().get("traceparent") {
                            kept.lock().unwrap().push(v.to_str().unwrap().to_owned());
                        }
                        hyper::service::Service::call(&service, req)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), recording)
                    .await;
            });
        }
    });
    (format!("http://{address}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_s3_carry_the_trace_on() {
    use artifactstore::storage::s3::{S3Settings, S3Store, SecretRef};
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fs")).unwrap();
    let (access, secret) = ("trace-access", "trace-secret-key-0123456789");
    let (endpoint, seen) = recording_s3(&dir.path().join("fs"), access, secret).await;
    let (access_file, secret_file) = (dir.path().join("access"), dir.path().join("secret"));
    std::fs::write(&access_file, access).unwrap();
    std::fs::write(&secret_file, secret).unwrap();
    let mut settings = S3Settings::for_tests("traced");
    settings.endpoint_url = Some(endpoint.clone());
    settings.access_key_ref = SecretRef::File(access_file.clone());
    settings.secret_key_ref = SecretRef::File(secret_file.clone());
    let store = S3Store::open("s3", &settings).unwrap();
    store
        .client()
        .create_bucket()
        .bucket("traced")
        .send()
        .await
        .unwrap();
    let storage = dir.path().join("storage.toml");
    std::fs::write(
        &storage,
        format!(
            "default_backend = \"s3\"\n[backends.s3]\nkind = \"s3\"\nendpoint_url = \"{endpoint}\"\n\
             bucket = \"traced\"\naccess_key_ref = \"file:{}\"\nsecret_key_ref = \"file:{}\"\n\
             force_path_style = true\n",
            access_file.display(),
            secret_file.display()
        ),
    )
    .unwrap();
    let (collector, _received) = otlp_receiver().await;
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_OTLP_ENDPOINT", &collector),
            ("ARTIFACTSTORE_STORAGE_FILE", storage.to_str().unwrap()),
        ],
    );
    let http = Client::new();
    let package = server
        .create_package(&http, "alpha-writer", "s3-traced")
        .await;
    seen.lock().unwrap().clear();
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let resp = http
        .put(server.url(&format!("/packages/{package}/files/t.bin")))
        .bearer_auth("alpha-writer")
        .header("traceparent", format!("00-{trace_id}-10f067aa0ba902b8-01"))
        .body(vec![2u8; 2_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|t| t.starts_with(&format!("00-{trace_id}-"))),
        "no S3 request carried the client's trace: {seen:?}"
    );
    // Each carries a span of ours (not the client's own span id).
    assert!(
        seen.iter().all(|t| !t.contains("10f067aa0ba902b8")),
        "{seen:?}"
    );
}

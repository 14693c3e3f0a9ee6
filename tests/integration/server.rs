//! The real `artifactstore` binary: serve, health, problem+json, graceful shutdown, the spec.

use crate::harness::TestDb;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `artifactstore serve` on a random port.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Its data directory (upload spools, local blobs under `blobs/`).
    pub data: std::path::PathBuf,
    _owned: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on the test database with a fresh data directory of its own.
    pub fn start(db: &TestDb, extra_env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(&db.url, data.path(), extra_env);
        server._owned = Some(data);
        server
    }

    /// A server on the database at `url` with the data directory `data` (kept by the caller,
    /// say to start another server on it after this one was killed).
    pub fn start_in(url: &str, data: &std::path::Path, extra_env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("ARTIFACTSTORE_DATABASE_URL", url)
            .env("ARTIFACTSTORE_DATA_DIR", data)
            .env("ARTIFACTSTORE_LOG", "warn")
            // Tests must not depend on how full the machine's disk is (the ones about a full
            // disk set their own).
            .env("ARTIFACTSTORE_MIN_FREE_BYTES", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .expect("server prints its address")
            .to_owned();
        Server {
            child,
            base,
            data: data.to_owned(),
            _owned: None,
        }
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A new open package of the token's tenant (producer `p`); its id.
    pub async fn create_package(
        &self,
        http: &reqwest::Client,
        token: &str,
        subject: &str,
    ) -> String {
        let created = crate::harness::json_of(
            http.post(self.url("/packages"))
                .bearer_auth(token)
                .json(&serde_json::json!({"producer": "p", "subject": subject}))
                .send()
                .await
                .unwrap(),
            reqwest::StatusCode::CREATED,
        )
        .await;
        created["id"].as_str().unwrap().to_owned()
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("server did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn serve_reports_health_problems_and_shuts_down_gracefully() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[]);
    let http = reqwest::Client::new();

    let health = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["backends"][0]["id"], "local");
    assert_eq!(body["backends"][0]["healthy"], true);

    for (method, path, status) in [("GET", "/no/such/route", 404), ("DELETE", "/health", 405)] {
        let resp = http
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["status"], status);
        assert!(
            problem["type"].is_string()
                && problem["title"].is_string()
                && problem["detail"].is_string()
        );
    }

    let spec = http.get(server.url("/openapi.json")).send().await.unwrap();
    assert_eq!(spec.status(), 200);
    assert_eq!(
        http.get(server.url("/docs")).send().await.unwrap().status(),
        200
    );

    // The CLI's health command agrees.
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["health", "--server", &server.base])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\": \"ok\""));

    assert!(server.terminate().success(), "SIGTERM is a clean shutdown");
}

#[tokio::test]
async fn health_is_unavailable_when_the_backend_root_is_gone() {
    let db = TestDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let blobs = root.path().join("blobs");
    let server = Server::start(
        &db,
        &[("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", blobs.to_str().unwrap())],
    );
    std::fs::remove_dir_all(&blobs).unwrap();
    let resp = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().contains_key("retry-after"),
        "a 503 says when to look again"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["backends"][0]["healthy"], false);
}

#[test]
fn invalid_settings_stop_start_up_with_one_line_naming_the_setting() {
    for (var, value) in [
        ("ARTIFACTSTORE_LISTEN", "not-an-address"),
        ("ARTIFACTSTORE_MAX_FILE_SIZE", "huge"),
        ("ARTIFACTSTORE_DATABASE_URL", "postgres://x:y@h:notaport/db"),
        (
            "ARTIFACTSTORE_DATABASE_URL",
            "postgres://x:y@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem",
        ),
        ("ARTIFACTSTORE_LOG_FORMAT", "xml"),
        ("ARTIFACTSTORE_MAX_WRITE_THROUGH_UPLOADS", "lots"),
        ("ARTIFACTSTORE_MAX_WRITE_THROUGH_UPLOADS", "-1"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .arg("serve")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}: {stderr}");
        assert!(lines[0].contains(var), "{var}: {stderr}");
    }
}

/// The committed spec is what the code generates. Regenerate with
/// `cargo run -- openapi > openapi/artifactstore.json`.
#[test]
fn committed_openapi_spec_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/openapi/artifactstore.json"
    ))
    .expect("openapi/artifactstore.json is committed");
    let generated = artifactstore::api::spec_json();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/artifactstore.json is stale: run `cargo run -- openapi > openapi/artifactstore.json`"
    );
    let spec: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
        }
    }
}

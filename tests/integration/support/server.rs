//! A real `artifactstore serve` process on a random port.

use super::TestDb;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `artifactstore serve` on a random port.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// `http://host:port/metrics` of its metrics listener, unless turned off.
    pub metrics: Option<String>,
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
            .env("ARTIFACTSTORE_METRICS_LISTEN", "127.0.0.1:0")
            // Tests must not depend on how full the machine's disk is (the ones about a full
            // disk set their own).
            .env("ARTIFACTSTORE_MIN_FREE_BYTES", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let metrics_off = extra_env
            .iter()
            .any(|(k, v)| *k == "ARTIFACTSTORE_METRICS_LISTEN" && v.is_empty());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .expect("server prints its address")
            .to_owned();
        // The metrics line comes in the same write as the first.
        let metrics = (!metrics_off).then(|| {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            line.trim()
                .strip_prefix("metrics on ")
                .expect("server prints its metrics address")
                .to_owned()
        });
        Server {
            child,
            base,
            metrics,
            data: data.to_owned(),
            _owned: None,
        }
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to 15 s) until `url` (a `/readyz`) answers 200: a server is not ready until
    /// its event listener connects, which a loaded machine may take a moment to do after the
    /// server announced its address.
    pub async fn wait_ready(url: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let resp = reqwest::get(url).await.unwrap();
            if resp.status() == reqwest::StatusCode::OK {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url} not ready within 15 s: {}",
                resp.text().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let created = crate::support::json_of(
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

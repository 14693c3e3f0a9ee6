//! The real `artifactstore` binary: serve, health, problem+json, graceful shutdown, the spec.

use crate::support::{Server, TestDb};
use std::process::Command;

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

/// A bad setting stops every server command before it touches anything, with one line naming
/// the setting (its variable and its flag), whether it came from a flag or from the
/// environment, and exit code 2.
#[test]
fn invalid_settings_stop_start_up_with_one_line_naming_the_setting() {
    let data = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("serve", &[], "ARTIFACTSTORE_LISTEN", "not-an-address"),
        ("serve", &[], "ARTIFACTSTORE_METRICS_LISTEN", "nope"),
        ("worker", &[], "ARTIFACTSTORE_METRICS_LISTEN", "127.0.0.1"),
        ("serve", &[], "ARTIFACTSTORE_MAX_FILE_SIZE", "huge"),
        (
            "serve",
            &["--max-file-size", "huge"],
            "ARTIFACTSTORE_MAX_FILE_SIZE",
            "1",
        ),
        (
            "serve",
            &[],
            "ARTIFACTSTORE_DATABASE_URL",
            "postgres://x:y@h:notaport/db",
        ),
        (
            "migrate",
            &[],
            "ARTIFACTSTORE_DATABASE_URL",
            "postgres://x:y@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem",
        ),
        ("serve", &[], "ARTIFACTSTORE_LOG_FORMAT", "xml"),
        ("serve", &[], "ARTIFACTSTORE_MAX_STREAMING_CHUNKS", "lots"),
        ("serve", &[], "ARTIFACTSTORE_MAX_STREAMING_CHUNKS", "0"),
        ("serve", &[], "ARTIFACTSTORE_UPLOAD_TTL_SECONDS", "0"),
        ("serve", &[], "ARTIFACTSTORE_DEV_MODE", "maybe"),
        ("worker", &[], "ARTIFACTSTORE_MIN_FREE_BYTES", "-1"),
        ("worker", &[], "ARTIFACTSTORE_VERIFY_SAMPLE", "2"),
        // A duration past any clock's range (the worker would panic adding it to now).
        (
            "worker",
            &[],
            "ARTIFACTSTORE_WORKER_SWEEP_SECONDS",
            "18446744073709551615",
        ),
        (
            "worker",
            &[],
            "ARTIFACTSTORE_GC_GRACE_SECONDS",
            "999999999999",
        ),
        ("replay", &[], "ARTIFACTSTORE_DB_POOL_SIZE", "0"),
        // Found after parsing, when settings are put together: the same line and code.
        ("serve", &[], "ARTIFACTSTORE_TOKENS", "no-colons-here"),
        ("serve", &[], "ARTIFACTSTORE_STORAGE_DEFAULT", "nowhere"),
    ];
    for (command, args, var, value) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .arg(command)
            .args(*args)
            .env("ARTIFACTSTORE_DATA_DIR", data.path())
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}={value} {args:?}: {stderr}"
        );
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}: {stderr}");
        assert!(
            lines[0].starts_with(&format!("error: invalid setting {var} (--")),
            "{var}={value} {args:?}: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "nothing was created"
    );
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

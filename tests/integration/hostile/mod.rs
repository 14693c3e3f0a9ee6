//! The server tried as an attacker (or a clumsy client) would: abort storms, slow heads and
//! bodies, huge and malformed bodies without a token, the complete/PATCH race, stored files
//! that look like our problems, cross-tenant oracles, development mode in the open. Each test
//! failed on the code before its fix. The fixtures they share are here; the tests, by concern,
//! in the modules below.

mod connections;
mod inputs;
mod pool;
mod stored_bytes;
mod tenants;

use crate::support::Server;
use crate::support::{TestClock, TestDb, TestEnv, body, random_bytes};
use artifactstore::domain::{RelativePath, TenantId};
use artifactstore::identity::DualHasher;
use artifactstore::registry::NewPackage;
use futures::SinkExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALPHA_WRITER: &str = "alpha-writer-token";
const ALPHA_READER: &str = "alpha-reader-token";
const ALPHA_ADMIN: &str = "alpha-admin-token";
const BETA_WRITER: &str = "beta-writer-token";
const OPERATOR: &str = "system-admin-token";
const TOKENS: &str = "alpha:read+write:alpha-writer-token,alpha:read:alpha-reader-token,\
                      alpha:admin:alpha-admin-token,beta:read+write:beta-writer-token,\
                      system:admin:system-admin-token";

fn start(db: &TestDb, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("ARTIFACTSTORE_TOKENS", TOKENS)];
    env.extend_from_slice(extra);
    Server::start(db, &env)
}

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

use crate::support::json_of;

async fn new_package(http: &Client, server: &Server, token: &str) -> String {
    server.create_package(http, token, "s").await
}

/// A new upload session of alpha's for `path` in `package`; its id.
async fn new_session(
    http: &Client,
    server: &Server,
    package: &str,
    path: &str,
    size: Option<u64>,
) -> String {
    let mut body = json!({"package_id": package, "relative_path": path});
    if let Some(size) = size {
        body["size"] = size.into();
    }
    let session = json_of(
        http.post(server.url("/uploads"))
            .bearer_auth(ALPHA_WRITER)
            .json(&body)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    session["id"].as_str().unwrap().to_owned()
}

/// Reads from a raw connection until the server closes it (or `bound` passes): what it sent.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read).await.ok().map(|()| out)
}

/// The status code and the head (lowercased) of a raw HTTP/1.1 answer, read within `bound`.
async fn answer_within(stream: &mut TcpStream, bound: Duration) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        Some(())
    };
    tokio::time::timeout(bound, read).await.ok()??;
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head))
}

/// `GET /packages` as alpha's reader, answered (whatever the answer) within `bound`.
async fn list_within(http: &Client, server: &Server, bound: Duration) -> reqwest::Response {
    let list = http
        .get(server.url("/packages"))
        .bearer_auth(ALPHA_READER)
        .send();
    tokio::time::timeout(bound, list)
        .await
        .expect("answered, not left hanging")
        .unwrap()
}

/// Whether some process holds the lock on the spool file (a chunk being received).
fn spool_locked(path: &std::path::Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends a request head and the first `sent` bytes of a body announced as `length` bytes, and
/// returns the status the server answers with before the rest arrives (if it does in time).
/// Such an answer always says `Connection: close`: the rest of the body is never read.
async fn answer_before_body(server: &Server, head: &str, length: u64, sent: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(address(server)).await.unwrap();
    let request = format!("{head}Host: x\r\nContent-Length: {length}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    let (status, head) = answer_within(&mut s, Duration::from_secs(5)).await?;
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    Some(status)
}

/// A server, a package of alpha's, and files in it: `empty.bin` (no bytes) and
/// `site/résumé page.html` (`text/html` that would run script if a browser rendered it).
struct Holes {
    server: Server,
    http: Client,
    package: String,
    empty: Value,
    page: Value,
    _db: TestDb,
}

impl Holes {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let server = start(&db, &[]);
        let http = Client::new();
        let package = new_package(&http, &server, ALPHA_WRITER).await;
        let empty = json_of(
            http.put(server.url(&format!("/packages/{package}/files/empty.bin")))
                .bearer_auth(ALPHA_WRITER)
                .body(Vec::new())
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        let page = json_of(
            http.put(server.url(&format!(
                "/packages/{package}/files/site/r%C3%A9sum%C3%A9%20page.html"
            )))
            .bearer_auth(ALPHA_WRITER)
            .header("Content-Type", "text/html")
            .body("<script>alert(1)</script>")
            .send()
            .await
            .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        Holes {
            server,
            http,
            package,
            empty,
            page,
            _db: db,
        }
    }

    async fn download(&self, file: &Value, range: Option<String>) -> reqwest::Response {
        let id = file["id"].as_str().unwrap();
        let mut req = self
            .http
            .get(self.server.url(&format!("/files/{id}/download")))
            .bearer_auth(ALPHA_WRITER);
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        req.send().await.unwrap()
    }
}

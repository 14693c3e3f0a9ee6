//! The HTTP API through the real server on a random port. The client and the checks the
//! tests share are here; the tests, by concern, in the modules below.

mod audit;
mod flow;
mod links;
mod listing;
mod refusals;
mod removal;
mod tokens;

use crate::support::Server;
use crate::support::{TestDb, random_bytes};
use base64::Engine as _;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;

const WRITER: &str = "acme-writer-token";
const READER: &str = "acme-reader-token";
const OTHER: &str = "globex-writer-token";
const TOKENS: &str = "acme:read+write:acme-writer-token,acme:read:acme-reader-token,globex:write:globex-writer-token";

struct Api {
    server: Server,
    http: Client,
}

impl Api {
    fn start(db: &TestDb, extra: &[(&str, &str)]) -> Self {
        let mut env = vec![("ARTIFACTSTORE_TOKENS", TOKENS)];
        env.extend_from_slice(extra);
        Api {
            server: Server::start(db, &env),
            http: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn create(&self, token: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url("/packages"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{:?}",
            resp.text().await
        );
        resp.json().await.unwrap()
    }

    async fn put(&self, token: &str, package: &str, path: &str, data: &[u8]) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/packages/{package}/files/{path}")))
            .bearer_auth(token)
            .body(data.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Finalizes a package, which must succeed.
    async fn finalize(&self, token: &str, package: &str) -> Value {
        let resp = self
            .http
            .post(self.url(&format!("/packages/{package}/finalize")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
        resp.json().await.unwrap()
    }

    /// A 200 answer's JSON body.
    async fn get_json(&self, token: &str, path: String) -> Value {
        let resp = self
            .http
            .get(self.url(&path))
            .bearer_auth(token)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.json().await.unwrap()
    }

    /// The whole body of a file's download.
    async fn download(&self, token: &str, file: &Value) -> Vec<u8> {
        let id = file["id"].as_str().unwrap();
        let resp = self
            .http
            .get(self.url(&format!("/files/{id}/download")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.bytes().await.unwrap().to_vec()
    }
}

async fn assert_problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    for key in ["type", "title", "detail", "instance"] {
        assert!(body[key].is_string(), "problem lacks {key}: {body}");
    }
    assert_eq!(body["status"], status);
    body
}

/// A request that must be refused with a problem of `status`, and why.
struct Refused {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    token: Option<&'static str>,
    body: Sent,
    status: u16,
}

/// What a refused request sends.
enum Sent {
    Nothing,
    Json(Value),
    Raw(&'static str, &'static str),
    Bytes(Vec<u8>),
}

fn refused(
    what: &'static str,
    method: &str,
    path: impl Into<String>,
    token: Option<&'static str>,
    body: Sent,
    status: u16,
) -> Refused {
    Refused {
        what,
        method: method.parse().unwrap(),
        path: path.into(),
        token,
        body,
        status,
    }
}

impl Api {
    /// Sends each request and checks its problem; the problems, in order.
    async fn refuse_all(&self, cases: Vec<Refused>) -> Vec<Value> {
        let mut problems = Vec::new();
        for case in cases {
            let mut request = self.http.request(case.method.clone(), self.url(&case.path));
            if let Some(token) = case.token {
                request = request.bearer_auth(token);
            }
            request = match case.body {
                Sent::Nothing => request,
                Sent::Json(value) => request.json(&value),
                Sent::Raw(content_type, text) => {
                    request.header("content-type", content_type).body(text)
                }
                Sent::Bytes(bytes) => request.body(bytes),
            };
            let resp = request.send().await.unwrap();
            assert_eq!(
                resp.status().as_u16(),
                case.status,
                "{}: {} {}",
                case.what,
                case.method,
                case.path
            );
            problems.push(assert_problem(resp, case.status).await);
        }
        problems
    }
}

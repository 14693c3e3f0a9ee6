//! Producers' provenance at finalize: recorded as given in the manifest and the signed
//! attestation, refused whole (the package stays open) when it is malformed, ambiguous or too
//! large; from the CLI too.

use crate::support::{Server, TestDb, client_command, output_text};
use base64::Engine as _;
use serde_json::{Value, json};
use std::process::{Command, Output};

const TOKENS: &str =
    "acme:read+write:acme-token,acme:read:acme-reader,globex:read+write:globex-token";

fn slsa() -> Value {
    json!({
        "buildDefinition": {
            "buildType": "https://ci.example.com/build/v1",
            "externalParameters": {"ref": "refs/tags/v1.0", "attempt": 2},
            "resolvedDependencies": [{"uri": "git+https://example.com/repo", "digest": {"sha1": "abc"}}],
        },
        "runDetails": {"builder": {"id": "https://ci.example.com/runner"}},
    })
}

async fn finalize(
    server: &Server,
    http: &reqwest::Client,
    token: &str,
    id: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let resp = http
        .post(server.url(&format!("/packages/{id}/finalize")))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get_json(server: &Server, http: &reqwest::Client, path: &str) -> Value {
    let resp = http
        .get(server.url(path))
        .bearer_auth("acme-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.json().await.unwrap()
}

async fn package_with_a_file(server: &Server, http: &reqwest::Client) -> String {
    let id = server.create_package(http, "acme-token", "release").await;
    let resp = http
        .put(server.url(&format!("/packages/{id}/files/dist/app.bin")))
        .bearer_auth("acme-token")
        .body(b"app bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    id
}

/// An SLSA predicate attached at finalize is in the manifest (CBOR and JSON) and in the
/// attestation's signed statement, which verifies offline; a package finalized without one
/// has no `supplied` member at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provenance_attached_at_finalize_is_in_the_manifest_and_the_signed_statement() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    let id = package_with_a_file(&server, &http).await;
    let body = json!({"provenance": {
        "predicate_type": "https://slsa.dev/provenance/v1",
        "predicate": slsa(),
    }});
    let (status, package) = finalize(
        &server,
        &http,
        "acme-token",
        &id,
        "application/json; charset=utf-8",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{package}");
    assert_eq!(package["status"], "finalized");

    let manifest = get_json(&server, &http, &format!("/packages/{id}/manifest.json")).await;
    let supplied = &manifest["provenance"]["supplied"];
    assert_eq!(supplied["predicate_type"], "https://slsa.dev/provenance/v1");
    assert_eq!(supplied["predicate"], slsa());
    assert!(
        manifest["provenance"]["finalized_by"]
            .as_str()
            .unwrap()
            .starts_with("acme")
    );

    let envelope = get_json(&server, &http, &format!("/packages/{id}/attestation")).await;
    let statement: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        statement["predicate"]["provenance"]["supplied"]["predicate"],
        slsa()
    );

    // Offline: the bytes, the manifest carrying the provenance, and the signature over both.
    let dir = tempfile::tempdir().unwrap();
    let cbor = http
        .get(server.url(&format!("/packages/{id}/manifest")))
        .bearer_auth("acme-token")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(dir.path().join("m.cbor"), &cbor).unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        serde_json::to_vec(&envelope).unwrap(),
    )
    .unwrap();
    let keys = http.get(server.url("/keys")).send().await.unwrap();
    let keys: Value = keys.json().await.unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        keys["keys"][0]["public_key_pem"].as_str().unwrap(),
    )
    .unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("dist")).unwrap();
    std::fs::write(tree.join("dist/app.bin"), b"app bytes").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .arg("verify-package")
        .arg(&tree)
        .args(["--manifest", dir.path().join("m.cbor").to_str().unwrap()])
        .args(["--attestation", dir.path().join("a.json").to_str().unwrap()])
        .args(["--key", dir.path().join("key.pem").to_str().unwrap()])
        .arg("--quiet")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    // Without a body: no `supplied` member.
    let plain = package_with_a_file(&server, &http).await;
    let (status, _) = finalize(&server, &http, "acme-token", &plain, "", "").await;
    assert_eq!(status, 200);
    let manifest = get_json(&server, &http, &format!("/packages/{plain}/manifest.json")).await;
    assert!(
        manifest["provenance"].get("supplied").is_none(),
        "{manifest}"
    );
}

/// Every malformed, ambiguous or oversized provenance is refused with its problem and changes
/// nothing: the package stays open and finalizes afterwards. Scope and tenancy come first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_provenance_is_refused_whole_and_the_package_stays_open() {
    let db = TestDb::new().await;
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_MAX_PROVENANCE", "1KiB"),
        ],
    );
    let http = reqwest::Client::new();
    let id = package_with_a_file(&server, &http).await;
    let json = "application/json";
    let mut slsa_without_builder = slsa();
    slsa_without_builder["runDetails"] = json!({});
    let mut deep = json!("bottom");
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let refusals: Vec<(&str, &str, String, u16, &str)> = vec![
        ("acme-reader", json, "{}".into(), 403, "scope"),
        ("globex-token", json, "{}".into(), 404, "not found"),
        (
            "acme-token",
            "text/plain",
            "{}".into(),
            415,
            "application/json",
        ),
        (
            "acme-token",
            json,
            "{\"provenance\":".into(),
            400,
            "not JSON",
        ),
        ("acme-token", json, "[]".into(), 400, "JSON object"),
        (
            "acme-token",
            json,
            r#"{"provenance": {"predicate": {"a": 1, "a": 2}}}"#.into(),
            400,
            "appears twice",
        ),
        (
            "acme-token",
            json,
            r#"{"provenance": {"predicate": {}}, "extra": 1}"#.into(),
            400,
            "unknown member `extra`",
        ),
        (
            "acme-token",
            json,
            r#"{"provenance": {"predicate": {}, "kind": "x"}}"#.into(),
            400,
            "provenance.kind",
        ),
        (
            "acme-token",
            json,
            r#"{"provenance": {"predicate_type": "x:y"}}"#.into(),
            400,
            "needs `predicate`",
        ),
        (
            "acme-token",
            json,
            r#"{"provenance": {"predicate": {"ratio": 0.5}}}"#.into(),
            422,
            "integers",
        ),
        (
            "acme-token",
            json,
            r#"{"provenance": {"predicate": {"n": 9007199254740993}}}"#.into(),
            422,
            "integers",
        ),
        (
            "acme-token",
            json,
            r#"{"provenance": {"predicate": "a string"}}"#.into(),
            422,
            "JSON object",
        ),
        (
            "acme-token",
            json,
            json!({"provenance": {"predicate_type": "not a uri", "predicate": {}}}).to_string(),
            422,
            "not a URI",
        ),
        (
            "acme-token",
            json,
            json!({"provenance": {"predicate_type": "https://slsa.dev/provenance/v1",
                                  "predicate": slsa_without_builder}})
            .to_string(),
            422,
            "runDetails.builder.id",
        ),
        (
            "acme-token",
            json,
            json!({"provenance": {"predicate": {"deep": deep}}}).to_string(),
            422,
            "deeper than 32",
        ),
        (
            "acme-token",
            json,
            json!({"provenance": {"predicate": {"log": "x".repeat(2000)}}}).to_string(),
            413,
            "at most 1024",
        ),
        (
            "acme-token",
            json,
            format!(
                "{{\"provenance\": {{\"predicate\": {{\"n\": [{}0]}}}}}}",
                "0,".repeat(5000)
            ),
            413,
            "no body over 8192 bytes",
        ),
    ];
    for (token, content_type, body, status, says) in &refusals {
        let (got, problem) = finalize(&server, &http, token, &id, content_type, body).await;
        assert_eq!(got, *status, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    let package = get_json(&server, &http, &format!("/packages/{id}")).await;
    assert_eq!(package["status"], "open", "nothing was half-done");

    let (status, _) = finalize(
        &server,
        &http,
        "acme-token",
        &id,
        json,
        r#"{"provenance": {"predicate": {"pipeline": 7}}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let manifest = get_json(&server, &http, &format!("/packages/{id}/manifest.json")).await;
    assert_eq!(
        manifest["provenance"]["supplied"],
        json!({"predicate": {"pipeline": 7}})
    );
    // Finalizing again, with or without provenance, is the usual conflict.
    let (status, _) = finalize(&server, &http, "acme-token", &id, json, "{}").await;
    assert_eq!(status, 409);
}

/// `push --finalize --provenance` and `finalize --provenance` attach a file's JSON; a bad file,
/// or provenance without `--finalize`, fails the push before anything is created or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_attaches_a_provenance_file_and_checks_it_before_uploading() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"a").unwrap();
    let good = work.path().join("slsa.json");
    std::fs::write(&good, serde_json::to_vec_pretty(&slsa()).unwrap()).unwrap();
    let twice = work.path().join("twice.json");
    std::fs::write(&twice, br#"{"a": 1, "a": 2}"#).unwrap();
    let float = work.path().join("float.json");
    std::fs::write(&float, br#"{"coverage": 0.93}"#).unwrap();
    let tree_arg = tree.to_str().unwrap();
    let push = |extra: &[&str]| {
        let mut args = vec!["push", tree_arg, "--producer", "ci", "--subject", "s"];
        args.extend_from_slice(extra);
        client_command(&server.base, "acme-token", &args)
    };

    let listed = |out: &Output| String::from_utf8_lossy(&out.stdout).lines().count();
    let before = listed(&client_command(&server.base, "acme-token", &["ls"]));
    for (extra, says) in [
        (
            vec!["--finalize", "--provenance", twice.to_str().unwrap()],
            "appears twice",
        ),
        (
            vec!["--provenance", good.to_str().unwrap()],
            "add --finalize",
        ),
        (
            vec!["--finalize", "--provenance", float.to_str().unwrap()],
            "integers",
        ),
        (
            vec!["--finalize", "--provenance", "/nonexistent/prov.json"],
            "/nonexistent/prov.json",
        ),
    ] {
        let out = push(&extra);
        assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
        assert!(output_text(&out).contains(says), "{}", output_text(&out));
    }
    assert_eq!(
        listed(&client_command(&server.base, "acme-token", &["ls"])),
        before,
        "no package was created"
    );

    let out = push(&[
        "--finalize",
        "--provenance",
        good.to_str().unwrap(),
        "--provenance-type",
        "slsa",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let manifest = get_json(&server, &http, &format!("/packages/{id}/manifest.json")).await;
    assert_eq!(
        manifest["provenance"]["supplied"],
        json!({"predicate_type": "https://slsa.dev/provenance/v1", "predicate": slsa()})
    );

    let out = push(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let free = work.path().join("free.json");
    std::fs::write(&free, br#"{"job": "nightly", "run": 4512}"#).unwrap();
    let out = client_command(
        &server.base,
        "acme-token",
        &[
            "finalize",
            &id,
            "--provenance",
            free.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let manifest = get_json(&server, &http, &format!("/packages/{id}/manifest.json")).await;
    assert_eq!(
        manifest["provenance"]["supplied"],
        json!({"predicate": {"job": "nightly", "run": 4512}})
    );
}

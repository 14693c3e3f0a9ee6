//! Tokens from a file of hashes, and anonymous reads.

use super::*;

#[tokio::test]
async fn token_file_hashes_and_anonymous_reads() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let hash = hex::encode(sha2::Sha256::digest(b"prod-token-123"));
    std::fs::write(&file, format!("[[token]]\ntenant = \"default\"\nscopes = [\"write\"]\nsha256 = \"{hash}\"\nname = \"ci-bot\"\n")).unwrap();
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS_FILE", file.to_str().unwrap()),
            ("ARTIFACTSTORE_ANON_READ", "true"),
        ],
    );
    let http = Client::new();
    let created: Value = http
        .post(server.url("/packages"))
        .bearer_auth("prod-token-123")
        .json(&json!({"producer": "p", "subject": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let finalized: Value = http
        .post(server.url(&format!("/packages/{id}/finalize")))
        .bearer_auth("prod-token-123")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(finalized["status"], "finalized");
    // Anonymous reads work; anonymous writes do not.
    assert_eq!(
        http.get(server.url(&format!("/packages/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let manifest: Value = http
        .get(server.url(&format!("/packages/{id}/manifest.json")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["provenance"]["finalized_by"], "ci-bot");
    assert_problem(
        http.post(server.url("/packages"))
            .json(&json!({"producer": "p", "subject": "s"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // Health stays anonymous.
    assert_eq!(
        http.get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

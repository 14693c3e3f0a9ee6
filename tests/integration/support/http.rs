//! HTTP helpers for tests against the real server.

/// The JSON body of a response that must have status `expect` (the body is shown otherwise);
/// `null` when the body is not JSON.
pub async fn json_of(resp: reqwest::Response, expect: reqwest::StatusCode) -> serde_json::Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, expect, "{text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// The bytes of file `id` (its download must answer 200), as `token` downloads them from the
/// server at `base`.
pub async fn download_file(http: &reqwest::Client, base: &str, token: &str, id: &str) -> Vec<u8> {
    let resp = http
        .get(format!("{base}/files/{id}/download"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "downloading {id}");
    resp.bytes().await.unwrap().to_vec()
}

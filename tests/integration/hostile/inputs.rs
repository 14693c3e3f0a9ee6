//! Inputs that look harmless: ranges, names, paths with two spellings, JSON members no operation
//! defines.

use super::*;

#[tokio::test]
async fn a_range_of_an_empty_file_is_unsatisfiable_not_invalid() {
    let holes = Holes::new().await;
    let resp = holes.download(&holes.empty, Some("bytes=0-".into())).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()["content-range"], "bytes */0");
    let whole = holes.download(&holes.empty, None).await;
    assert_eq!(whole.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_range_header_of_many_ranges_is_ignored_whole() {
    let holes = Holes::new().await;
    let ranges = |n: usize| {
        format!(
            "bytes={}",
            (0..n)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    for n in [17, 34_000] {
        let resp = holes.download(&holes.page, Some(ranges(n))).await;
        assert_eq!(resp.status(), StatusCode::OK, "{n} ranges");
        assert_eq!(resp.bytes().await.unwrap(), "<script>alert(1)</script>");
    }
    // Beyond sixteen they are not even looked at: ranges past the end answer the whole file
    // instead of a 416 (which sixteen of them still get).
    let past_end = |n: usize| {
        format!(
            "bytes={}",
            (0..n)
                .map(|i| format!("{}-{}", 1000 + i, 1000 + i))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let resp = holes.download(&holes.page, Some(past_end(17))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = holes.download(&holes.page, Some(past_end(16))).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let one = holes.download(&holes.page, Some("bytes=1-2".into())).await;
    assert_eq!(one.status(), StatusCode::PARTIAL_CONTENT);
}

#[tokio::test]
async fn downloads_are_named_attachments_that_are_never_sniffed() {
    let holes = Holes::new().await;
    for range in [None, Some("bytes=0-3".to_owned())] {
        let resp = holes.download(&holes.page, range).await;
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            resp.headers()["content-disposition"],
            "attachment; filename=\"r_sum_ page.html\"; \
             filename*=UTF-8''r%C3%A9sum%C3%A9%20page.html"
        );
    }
    let resp = holes.download(&holes.empty, None).await;
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"empty.bin\""
    );
}

#[tokio::test]
async fn paths_that_display_as_others_or_have_two_spellings_are_refused() {
    let holes = Holes::new().await;
    for (path, status) in [
        ("evil%E2%80%AEtxt.exe", StatusCode::UNPROCESSABLE_ENTITY),
        ("a%E2%80%8Eb", StatusCode::UNPROCESSABLE_ENTITY),
        ("x%E2%81%A6y", StatusCode::UNPROCESSABLE_ENTITY),
        ("e%CC%81.txt", StatusCode::UNPROCESSABLE_ENTITY),
        ("a%C2%85b", StatusCode::UNPROCESSABLE_ENTITY),
        ("a%7Fb", StatusCode::UNPROCESSABLE_ENTITY),
        // The composed spelling is fine.
        ("%C3%A9.txt", StatusCode::CREATED),
    ] {
        let url = format!("/packages/{}/files/{path}", holes.package);
        let resp = holes
            .http
            .put(holes.server.url(&url))
            .bearer_auth(ALPHA_WRITER)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
}

#[tokio::test]
async fn a_json_member_the_operation_does_not_define_is_refused() {
    let holes = Holes::new().await;
    let http = &holes.http;
    for (method, path, body) in [
        (
            "POST",
            "/packages".to_owned(),
            json!({"producer": "p", "subject": "s", "retention_clas": "long"}),
        ),
        (
            "POST",
            "/uploads".to_owned(),
            json!({"package_id": holes.package, "relative_path": "a", "sise": 3}),
        ),
        (
            "PATCH",
            format!("/packages/{}/retention", holes.package),
            json!({"retention_class": "long", "forse": true}),
        ),
    ] {
        let resp = http
            .request(method.parse().unwrap(), holes.server.url(&path))
            .bearer_auth(ALPHA_ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = json_of(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem["status"], 400, "{path}: {problem}");
    }
}

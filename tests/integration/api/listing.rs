//! Listing packages: filters, metadata and cursors.

use super::*;

#[tokio::test]
async fn listing_filters_metadata_and_cursor() {
    let db = TestDb::new().await;
    let api = Api::start(&db, &[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let p = api
            .create(WRITER, json!({"producer": if i < 3 {"a"} else {"b"}, "subject": format!("s{i}"), "metadata": {"k": format!("{}", i % 2), "x.y/z": "1"}}))
            .await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let get = |q: &'static str| {
        let url = api.url(&format!("/packages{q}"));
        let http = api.http.clone();
        async move {
            http.get(url)
                .bearer_auth(READER)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let ids_of = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let all = get("").await;
    assert_eq!(ids_of(&all), ids.iter().rev().cloned().collect::<Vec<_>>());
    assert!(all["next_cursor"].is_null());
    assert_eq!(
        ids_of(&get("?producer=a").await),
        vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    assert_eq!(
        ids_of(&get("?meta.k=1").await),
        vec![ids[3].clone(), ids[1].clone()]
    );
    assert_eq!(
        ids_of(&get("?meta.k=1&meta.x.y%2Fz=1&producer=a").await),
        vec![ids[1].clone()]
    );
    // The spelling the spec declares (`meta=<key>=<value>`, repeated), percent-encoded as
    // generated clients send it, means the same; one without `=` is refused.
    assert_eq!(
        ids_of(&get("?meta=k%3D1&meta=x.y/z=1&producer=a").await),
        vec![ids[1].clone()]
    );
    assert_eq!(
        ids_of(&get("?meta=k=0").await),
        vec![ids[4].clone(), ids[2].clone(), ids[0].clone()]
    );
    // More filters than metadata may have entries (64) is refused too.
    let too_many: Vec<String> = (0..65).map(|i| format!("meta=k{i}%3D1")).collect();
    let too_many = too_many.join("&");
    for bad in [
        "meta=%3Dvalue",
        "meta.=value",
        "meta.a%20b=1",
        "meta.k=1&meta=k=2",
        too_many.as_str(),
    ] {
        let refused = api
            .http
            .get(api.url(&format!("/packages?{bad}")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 422, "{bad}");
    }
    let refused = api
        .http
        .get(api.url("/packages?meta=k"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("`k`"),
        "{problem}"
    );
    assert_eq!(
        ids_of(&get("?status=finalized").await),
        Vec::<String>::new()
    );
    let page1 = get("?limit=2").await;
    assert_eq!(ids_of(&page1).len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2: Value = api
        .http
        .get(api.url(&format!("/packages?limit=2&cursor={cursor}")))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids_of(&page2), vec![ids[2].clone(), ids[1].clone()]);
    // Another tenant lists nothing of acme's.
    let other: Value = api
        .http
        .get(api.url("/packages"))
        .bearer_auth("globex-writer-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(json!({"items": []}));
    assert!(
        other["items"]
            .as_array()
            .map(|a| a.is_empty())
            .unwrap_or(true)
    );
}

//! Quotas and free space: a tenant cannot fill what others need, concurrent writes cannot
//! together pass a limit, and a full disk refuses writes while reads go on.

use crate::support::Server;
use crate::support::{TestDb, TestEnv, body, download_file, random_bytes};
use artifactstore::domain::TenantId;
use artifactstore::registry::{NewPackage, Quota, Registry};
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WRITER: &str = "alpha-writer-token";
const ADMIN: &str = "alpha-admin-token";
const BETA: &str = "beta-admin-token";
const OPERATOR: &str = "system-admin-token";
const TOKENS: &str = "alpha:read+write:alpha-writer-token,alpha:admin:alpha-admin-token,\
                      beta:admin:beta-admin-token,system:admin:system-admin-token";

use crate::support::json_of;

/// A 507 quota refusal: its type, and which quota, limit and use it names.
async fn assert_over(resp: reqwest::Response, quota: &str, limit: u64, used: u64) {
    let problem = json_of(resp, StatusCode::INSUFFICIENT_STORAGE).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/quota-exceeded"),
        "{problem}"
    );
    assert_eq!(
        (&problem["quota"], &problem["limit"], &problem["used"]),
        (&json!(quota), &json!(limit), &json!(used)),
        "{problem}"
    );
}

struct Api {
    server: Server,
    http: Client,
}

impl Api {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    async fn package(&self) -> reqwest::Response {
        self.send(
            "POST",
            "/packages",
            WRITER,
            Some(json!({"producer": "p", "subject": "s"})),
        )
        .await
    }

    async fn put(&self, package: &str, path: &str, data: Vec<u8>) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/packages/{package}/files/{path}")))
            .bearer_auth(WRITER)
            .body(data)
            .send()
            .await
            .unwrap()
    }

    async fn quota(&self, tenant: &str, token: &str) -> reqwest::Response {
        self.send("GET", &format!("/tenants/{tenant}/quota"), token, None)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_set_by_the_operator_and_refuse_writes_before_their_bytes() {
    let db = TestDb::new().await;
    let api = Api {
        server: Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]),
        http: Client::new(),
    };
    let limits = json!({"max_bytes": 10_000, "max_packages": 3, "max_upload_sessions": 2});
    // The operator's alone; every limit named.
    let refused = api
        .send("PUT", "/tenants/alpha/quota", ADMIN, Some(limits.clone()))
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let partial = api
        .send(
            "PUT",
            "/tenants/alpha/quota",
            OPERATOR,
            Some(json!({"max_bytes": 10})),
        )
        .await;
    assert_eq!(partial.status(), StatusCode::BAD_REQUEST);
    let set = json_of(
        api.send("PUT", "/tenants/alpha/quota", OPERATOR, Some(limits))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(set["max_bytes"], 10_000);
    assert_eq!(set["used"]["bytes"], 0);
    // A tenant's admin reads its own quota, never another's.
    let own = json_of(api.quota("alpha", ADMIN).await, StatusCode::OK).await;
    assert_eq!(own["max_packages"], 3);
    assert_eq!(
        api.quota("alpha", BETA).await.status(),
        StatusCode::NOT_FOUND
    );
    let beta = json_of(api.quota("beta", BETA).await, StatusCode::OK).await;
    assert_eq!(beta["max_bytes"], Value::Null, "no quota: no byte limit");
    assert_eq!(beta["max_upload_sessions"], 1000, "the server's default");

    let package = json_of(api.package().await, StatusCode::CREATED).await;
    let package = package["id"].as_str().unwrap().to_owned();
    json_of(
        api.put(&package, "a.bin", random_bytes(6000, 1)).await,
        StatusCode::CREATED,
    )
    .await;
    // Declared and too large: refused before the body, nothing kept.
    assert_over(
        api.put(&package, "b.bin", random_bytes(5000, 2)).await,
        "bytes",
        10_000,
        6000,
    )
    .await;
    let mut raw = tokio::net::TcpStream::connect(api.server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PUT /packages/{package}/files/c.bin HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {WRITER}\r\nContent-Length: 1000000000\r\n\r\n"
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    raw.write_all(&[0u8; 100]).await.unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), raw.read_exact(&mut answer))
        .await
        .expect("answered before the body")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 507");
    // Not declared: stopped as soon as it passes.
    let chunks =
        futures::stream::iter((0..5).map(|i| Ok::<_, std::io::Error>(random_bytes(1000, 10 + i))));
    let streamed = api
        .http
        .put(api.url(&format!("/packages/{package}/files/d.bin")))
        .bearer_auth(WRITER)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_over(streamed, "bytes", 10_000, 6000).await;

    // Upload sessions reserve what they declare.
    let session = |size: Option<u64>| {
        let mut body = json!({"package_id": package, "relative_path": "s.bin"});
        if let Some(size) = size {
            body["size"] = size.into();
        }
        api.send("POST", "/uploads", WRITER, Some(body))
    };
    let first = json_of(session(Some(3000)).await, StatusCode::CREATED).await;
    assert_over(session(Some(2000)).await, "bytes", 10_000, 9000).await;
    json_of(session(None).await, StatusCode::CREATED).await;
    assert_over(session(None).await, "upload_sessions", 2, 2).await;
    let used = json_of(api.quota("alpha", ADMIN).await, StatusCode::OK).await;
    assert_eq!(
        used["used"],
        json!({"bytes": 6000, "reserved_bytes": 3000, "packages": 1, "upload_sessions": 2})
    );
    // Cancelling gives the room back.
    let id = first["id"].as_str().unwrap();
    let cancelled = api
        .send("DELETE", &format!("/uploads/{id}"), WRITER, None)
        .await;
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    json_of(session(Some(2000)).await, StatusCode::CREATED).await;

    // Packages.
    for _ in 0..2 {
        json_of(api.package().await, StatusCode::CREATED).await;
    }
    assert_over(api.package().await, "packages", 3, 3).await;
    // The tenant sees its quota in its usage; other tenants are untouched.
    let usage = json_of(
        api.send("GET", "/usage", WRITER, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(usage["quota"]["max_packages"], 3, "{usage}");
    let beta_package = api
        .send(
            "POST",
            "/packages",
            BETA,
            Some(json!({"producer": "p", "subject": "s"})),
        )
        .await;
    assert_eq!(beta_package.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_a_size_reserve_their_chunks_and_keep_their_bytes_when_refused() {
    let db = TestDb::new().await;
    let api = Api {
        server: Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]),
        http: Client::new(),
    };
    let set_quota = |max_bytes: u64| {
        api.send(
            "PUT",
            "/tenants/alpha/quota",
            OPERATOR,
            Some(
                json!({"max_bytes": max_bytes, "max_packages": null, "max_upload_sessions": null}),
            ),
        )
    };
    json_of(set_quota(10_000).await, StatusCode::OK).await;
    let package = json_of(api.package().await, StatusCode::CREATED).await;
    let package = package["id"].as_str().unwrap().to_owned();
    let session = |path: &'static str| {
        api.send(
            "POST",
            "/uploads",
            WRITER,
            Some(json!({"package_id": package, "relative_path": path})),
        )
    };
    let a = json_of(session("a.bin").await, StatusCode::CREATED).await;
    let b = json_of(session("b.bin").await, StatusCode::CREATED).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let chunk = |id: &str, range: &str, body: reqwest::Body| {
        api.http
            .patch(api.url(&format!("/uploads/{id}")))
            .bearer_auth(WRITER)
            .header("Content-Range", range)
            .body(body)
            .send()
    };
    // A's chunk of 6000 bytes arrives slowly: 1000, then the rest when told.
    let data = random_bytes(6000, 7);
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let (head, rest) = (data[..1000].to_vec(), data[1000..].to_vec());
    let slow = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures::stream::once(async move {
            let _ = wait.await;
            Ok(rest)
        }),
    );
    let a_chunk = tokio::spawn(chunk(a, "bytes 0-5999/*", reqwest::Body::wrap_stream(slow)));
    // While it arrives, it holds its room: B's chunk that would pass the quota with it is
    // refused before its body.
    let mut reserved = 0;
    for _ in 0..100 {
        let quota = json_of(api.quota("alpha", ADMIN).await, StatusCode::OK).await;
        reserved = quota["used"]["reserved_bytes"].as_u64().unwrap();
        if reserved == 6000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reserved, 6000, "A's chunk reserved its end");
    assert_over(
        chunk(b, "bytes 0-5999/*", random_bytes(6000, 8).into())
            .await
            .unwrap(),
        "bytes",
        10_000,
        6000,
    )
    .await;
    go.send(()).unwrap();
    assert_eq!(
        a_chunk.await.unwrap().unwrap().status(),
        StatusCode::ACCEPTED
    );
    let b_data = random_bytes(4000, 9);
    let accepted = chunk(b, "bytes 0-3999/*", b_data.clone().into())
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let quota = json_of(api.quota("alpha", ADMIN).await, StatusCode::OK).await;
    assert_eq!(quota["used"]["reserved_bytes"], 10_000);
    let api = &api;
    let complete = |id: &str| {
        let path = format!("/uploads/{id}/complete");
        async move { api.send("POST", &path, WRITER, None).await }
    };
    json_of(complete(a).await, StatusCode::CREATED).await;

    // The quota lowered below what the tenant holds: completing B is refused, and B keeps its
    // bytes until there is room again.
    json_of(set_quota(5000).await, StatusCode::OK).await;
    assert_over(complete(b).await, "bytes", 5000, 6000).await;
    let kept = json_of(
        api.send("GET", &format!("/uploads/{b}"), WRITER, None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(kept["offset"], 4000, "{kept}");
    json_of(set_quota(20_000).await, StatusCode::OK).await;
    let file = json_of(complete(b).await, StatusCode::CREATED).await;
    let id = file["id"].as_str().unwrap();
    let stored = download_file(&api.http, &api.server.base, WRITER, id).await;
    assert_eq!(stored, b_data);
    let quota = json_of(api.quota("alpha", ADMIN).await, StatusCode::OK).await;
    assert_eq!(
        (&quota["used"]["bytes"], &quota["used"]["reserved_bytes"]),
        (&json!(10_000), &json!(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_quota_does_not_fail_the_batches_of_others() {
    let env = TestEnv::new().await;
    let registry = &env.registry;
    let (alpha, beta) = (
        TenantId::new("alpha").unwrap(),
        TenantId::new("beta").unwrap(),
    );
    registry
        .set_quota(
            &alpha,
            Quota {
                max_bytes: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let alpha_package = new_package(registry, &alpha, "standard").await;
    let beta_package = new_package(registry, &beta, "standard").await;
    let before = registry.group_commit_stats();
    // Small ingests of both tenants at once, so they share batches; ten of alpha's fit.
    let writes = (0..64u64).map(|i| {
        let (tenant, package) = if i % 2 == 0 {
            (&alpha, alpha_package)
        } else {
            (&beta, beta_package)
        };
        let data = random_bytes(100, 500 + i);
        async move {
            let result = registry
                .ingest_file(
                    tenant,
                    package,
                    request(&format!("f{i}")),
                    body(&data, 4096),
                )
                .await;
            (tenant, result)
        }
    });
    let results = futures::future::join_all(writes).await;
    let mut alpha_stored = 0;
    for (tenant, result) in &results {
        match result {
            Ok(_) if *tenant == &alpha => alpha_stored += 1,
            Ok(_) => {}
            Err(artifactstore::Error::OverQuota { .. }) if *tenant == &alpha => {}
            Err(e) => panic!("{tenant}: {e}"),
        }
    }
    assert_eq!(alpha_stored, 10);
    // Every stored file was recorded by a batch: none alone, after a batch failed.
    let after = registry.group_commit_stats();
    assert_eq!(after.1 - before.1, 32 + 10);
}

async fn new_package(
    registry: &Registry,
    tenant: &TenantId,
    class: &str,
) -> artifactstore::domain::PackageId {
    registry
        .create_package(
            tenant,
            NewPackage {
                producer: "p".into(),
                subject: "s".into(),
                retention_class: Some(class.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
}

use crate::support::ingest_request as request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_never_pass_a_quota_together_and_replay_rebuilds_it() {
    let env = TestEnv::new().await;
    let registry = &env.registry;
    let tenant = TenantId::new("alpha").unwrap();
    for (size, count, fit) in [(10_000usize, 30u64, 10u64), (2 << 20, 8, 3)] {
        let limit = size as u64 * fit;
        let already = registry.quota(&tenant).await.unwrap().used.bytes;
        registry
            .set_quota(
                &tenant,
                Quota {
                    max_bytes: Some(already + limit),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let package = new_package(registry, &tenant, "standard").await;
        let tenant = &tenant;
        let writes = (0..count).map(|i| {
            let data = random_bytes(size, 100 + i + size as u64);
            async move {
                registry
                    .ingest_file(
                        tenant,
                        package,
                        request(&format!("f{i}")),
                        body(&data, 4096),
                    )
                    .await
            }
        });
        let results = futures::future::join_all(writes).await;
        let stored = results.iter().filter(|r| r.is_ok()).count() as u64;
        for refused in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(refused, artifactstore::Error::OverQuota { .. }),
                "{refused}"
            );
        }
        assert_eq!(stored, fit, "{size}-byte files");
        let quota = registry.quota(tenant).await.unwrap();
        assert_eq!(quota.used.bytes, already + limit);
    }
    // The quota and the usage are views of the log, like the rest.
    let before = registry.quota(&tenant).await.unwrap();
    let pool = env.db.pool(2);
    let report = artifactstore::events::replay(&pool, true).await.unwrap();
    assert_eq!(report.identical, Some(true));
    artifactstore::events::replay(&pool, false).await.unwrap();
    assert_eq!(registry.quota(&tenant).await.unwrap(), before);
}

#[tokio::test]
async fn expired_bytes_leave_the_quota_when_their_package_leaves_the_views() {
    let env = TestEnv::new().await;
    let registry = &env.registry;
    crate::support::define_instant_class(registry).await;
    let tenant = TenantId::new("alpha").unwrap();
    registry
        .set_quota(
            &tenant,
            Quota {
                max_bytes: Some(8000),
                max_packages: Some(1),
                max_upload_sessions: None,
            },
        )
        .await
        .unwrap();
    let package = new_package(registry, &tenant, "instant").await;
    registry
        .ingest_file(
            &tenant,
            package,
            request("a"),
            body(&random_bytes(6000, 1), 1000),
        )
        .await
        .unwrap();
    registry
        .finalize_package(&tenant, package, None)
        .await
        .unwrap();
    let err = registry
        .create_package(
            &tenant,
            NewPackage {
                producer: "p".into(),
                subject: "s".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, artifactstore::Error::OverQuota { .. }),
        "{err}"
    );
    // Expired: its bytes and its place are free at once, before any collection.
    assert_eq!(registry.expire_due(3600, 10).await.unwrap().len(), 1);
    let quota = registry.quota(&tenant).await.unwrap();
    assert_eq!((quota.used.bytes, quota.used.packages), (0, 0));
    let package = new_package(registry, &tenant, "standard").await;
    registry
        .ingest_file(
            &tenant,
            package,
            request("b"),
            body(&random_bytes(7000, 2), 1000),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_minimum_free_space_writes_wait_while_reads_go_on() {
    let db = TestDb::new().await;
    let blobs = tempfile::tempdir().unwrap();
    let root = blobs.path().to_str().unwrap();
    let tokens = ("ARTIFACTSTORE_TOKENS", TOKENS);
    let roomy = Api {
        server: Server::start(&db, &[tokens, ("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", root)]),
        http: Client::new(),
    };
    let package = json_of(roomy.package().await, StatusCode::CREATED).await;
    let package = package["id"].as_str().unwrap().to_owned();
    let file = json_of(
        roomy.put(&package, "kept.bin", b"kept".to_vec()).await,
        StatusCode::CREATED,
    )
    .await;
    drop(roomy);
    // The same data, a server that wants more free space than any disk has.
    let full = Api {
        server: Server::start(
            &db,
            &[
                tokens,
                ("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", root),
                ("ARTIFACTSTORE_MIN_FREE_BYTES", "1000000TiB"),
            ],
        ),
        http: Client::new(),
    };
    for refused in [
        full.put(&package, "new.bin", b"new".to_vec()).await,
        full.send(
            "POST",
            "/uploads",
            WRITER,
            Some(json!({"package_id": package, "relative_path": "u.bin", "size": 3})),
        )
        .await,
    ] {
        let problem = json_of(refused, StatusCode::INSUFFICIENT_STORAGE).await;
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("/insufficient-storage"),
            "{problem}"
        );
    }
    let id = file["id"].as_str().unwrap();
    let read = full
        .send("GET", &format!("/files/{id}/download"), WRITER, None)
        .await;
    assert_eq!(read.bytes().await.unwrap(), "kept");
    let finalized = full
        .send(
            "POST",
            &format!("/packages/{package}/finalize"),
            WRITER,
            None,
        )
        .await;
    assert_eq!(finalized.status(), StatusCode::OK);
    let health = json_of(
        full.send("GET", "/health", ADMIN, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["disk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "local" && d["low"] == true),
        "{health}"
    );
}

/// A write reads its tenant's limits only when no quota change is in flight, and a quota
/// change waits for the writes in flight: a write is either checked against a new limit or
/// ends before it is set, never counted by neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_changes_and_writes_of_a_tenant_wait_for_each_other() {
    let env = TestEnv::new().await;
    let registry = env.registry.clone();
    let tenant = TenantId::default_tenant();
    let (class, key) = artifactstore::registry::quota_definition_lock(&tenant);
    let admin = env.db.client().await;
    let pause = std::time::Duration::from_millis(400);

    // A quota change in flight (the lock held as set_quota holds it): a write waits.
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({class}, {key})"
        ))
        .await
        .unwrap();
    let write = {
        let registry = registry.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move { new_package(&registry, &tenant, "standard").await })
    };
    tokio::time::sleep(pause).await;
    assert!(!write.is_finished(), "the write waits for the quota change");
    admin.batch_execute("COMMIT").await.unwrap();
    write.await.unwrap();

    // A write in flight (the lock held as a write holds it): a quota change waits.
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock_shared({class}, {key})"
        ))
        .await
        .unwrap();
    let change = {
        let registry = registry.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            registry
                .set_quota(
                    &tenant,
                    Quota {
                        max_packages: Some(10),
                        ..Quota::default()
                    },
                )
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(pause).await;
    assert!(
        !change.is_finished(),
        "the quota change waits for the write"
    );
    admin.batch_execute("COMMIT").await.unwrap();
    assert_eq!(change.await.unwrap().limits.max_packages, Some(10));
}

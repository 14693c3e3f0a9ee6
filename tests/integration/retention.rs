//! Retention through the real server and real worker processes: short classes expire on time,
//! holds keep packages, releases let them expire, class changes extend but never shorten,
//! three workers share 1,000 due packages exactly once (one killed mid-run), replay agrees.

use crate::support::Server;
use crate::support::{Killed, TestDb, TestEnv, body};
use artifactstore::domain::{RelativePath, TenantId};
use artifactstore::registry::{IngestRequest, NewPackage};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "acme-admin-token";
const WRITER: &str = "acme-writer-token";
/// An admin of the reserved `system` tenant: the only kind that defines retention classes.
const OPERATOR: &str = "system-admin-token";
const TOKENS: &str = "acme:admin:acme-admin-token,acme:read+write:acme-writer-token,\
                      system:admin:system-admin-token";

/// A `worker` process (daemon mode) on the test database, its local backend at `blobs` (the
/// root the servers or the registry of the test use: a local backend is one directory).
fn worker(db: &TestDb, blobs: &std::path::Path, extra: &[&str]) -> Child {
    let data = std::env::temp_dir().join(format!("worker-{}", uuid::Uuid::new_v4()));
    Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .arg("worker")
        .args(extra)
        .env("ARTIFACTSTORE_DATABASE_URL", &db.url)
        .env("ARTIFACTSTORE_DATA_DIR", &data)
        .env("ARTIFACTSTORE_STORAGE_LOCAL_ROOT", blobs)
        .env("ARTIFACTSTORE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn send(http: &Client, req: reqwest::RequestBuilder, expect: StatusCode) -> Value {
    let _ = http;
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, expect, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Waits (long-polling the event stream, bounded) for `v1.package.expired` of `package`.
async fn wait_expired(http: &Client, base: &str, package: &str, bound: Duration) -> Value {
    let deadline = Instant::now() + bound;
    let mut since = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "package {package} did not expire within {bound:?}"
        );
        let page: Value = http
            .get(format!(
                "{base}/events?since={since}&type=v1.package.expired&wait=2"
            ))
            .bearer_auth(ADMIN)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for event in page["events"].as_array().unwrap() {
            if event["payload"]["package_id"] == package {
                return event["payload"].clone();
            }
        }
        since = page["next_since"].as_i64().unwrap();
    }
}

fn timestamp(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        v.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_classes_expire_on_time_held_packages_wait_for_their_release() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let base = server.base.clone();
    let http = Client::new();
    // Classes are shared by every tenant: the operator's business alone.
    let class = json!({"duration_seconds": 2, "description": "test"});
    for token in [WRITER, ADMIN] {
        send(
            &http,
            http.put(format!("{base}/retention-classes/test-2s"))
                .bearer_auth(token)
                .json(&class),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    send(
        &http,
        http.put(format!("{base}/retention-classes/test-2s"))
            .bearer_auth(OPERATOR)
            .json(&json!({"duration_seconds": 2, "forever": true})),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let defined = send(
        &http,
        http.put(format!("{base}/retention-classes/test-2s"))
            .bearer_auth(OPERATOR)
            .json(&class),
        StatusCode::OK,
    )
    .await;
    assert_eq!(defined["duration_seconds"], 2);
    let classes = send(
        &http,
        http.get(format!("{base}/retention-classes"))
            .bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    assert_eq!(classes["items"].as_array().unwrap().len(), 6, "{classes}");

    let mut ids = Vec::new();
    for _ in 0..2 {
        let p = send(
            &http,
            http.post(format!("{base}/packages"))
                .bearer_auth(WRITER)
                .json(&json!({"producer": "ci", "subject": "s", "retention_class": "test-2s"})),
            StatusCode::CREATED,
        )
        .await;
        let id = p["id"].as_str().unwrap().to_owned();
        send(
            &http,
            http.put(format!("{base}/packages/{id}/files/a.txt"))
                .bearer_auth(WRITER)
                .body("bytes"),
            StatusCode::CREATED,
        )
        .await;
        let finalized = send(
            &http,
            http.post(format!("{base}/packages/{id}/finalize"))
                .bearer_auth(WRITER),
            StatusCode::OK,
        )
        .await;
        assert!(
            finalized["retention"]["expires_at"].is_string(),
            "{finalized}"
        );
        ids.push(id);
    }
    let (a, b) = (&ids[0], &ids[1]);
    send(
        &http,
        http.put(format!("{base}/packages/{b}/legal-hold"))
            .bearer_auth(WRITER)
            .json(&json!({"reason": "litigation"})),
        StatusCode::FORBIDDEN,
    )
    .await;
    let held = send(
        &http,
        http.put(format!("{base}/packages/{b}/legal-hold"))
            .bearer_auth(ADMIN)
            .json(&json!({"reason": "litigation"})),
        StatusCode::OK,
    )
    .await;
    assert_eq!(held["retention"]["legal_hold"], true);
    assert_eq!(held["retention"]["hold_reason"], "litigation");

    let _worker = Killed(worker(&db, &server.data.join("blobs"), &[]));
    let expired = wait_expired(&http, &base, a, Duration::from_secs(20)).await;
    let late = timestamp(&expired["expired_at"]) - timestamp(&expired["due_at"]);
    assert!(
        late < time::Duration::milliseconds(2500),
        "expired {late} after it fell due"
    );
    assert_eq!(expired["reason"], "retention");

    // Gone: 410 with when and why; the manifest stays readable; nothing can be added.
    let resp = http
        .get(format!("{base}/packages/{a}"))
        .bearer_auth(WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("expired at") && detail.contains("test-2s") && detail.contains("manifest"),
        "{detail}"
    );
    send(
        &http,
        http.get(format!("{base}/packages/{a}/manifest.json"))
            .bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    for request in [
        http.get(format!("{base}/packages/{a}/files/a.txt")),
        http.head(format!("{base}/packages/{a}/files/a.txt")),
    ] {
        let resp = request.bearer_auth(WRITER).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::GONE);
    }
    send(
        &http,
        http.put(format!("{base}/packages/{a}/files/b.txt"))
            .bearer_auth(WRITER)
            .body("more"),
        StatusCode::GONE,
    )
    .await;

    // The held package outlived its expiry; released, it expires promptly.
    let still = send(
        &http,
        http.get(format!("{base}/packages/{b}")).bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    assert_eq!(still["status"], "finalized");
    let released_at = time::OffsetDateTime::now_utc();
    send(
        &http,
        http.delete(format!("{base}/packages/{b}/legal-hold"))
            .bearer_auth(ADMIN),
        StatusCode::OK,
    )
    .await;
    // (Releasing twice is tested on a long-lived package below: this one may already be gone.)
    let expired = wait_expired(&http, &base, b, Duration::from_secs(10)).await;
    let after_release = timestamp(&expired["expired_at"]) - released_at;
    assert!(
        after_release < time::Duration::milliseconds(2500),
        "expired {after_release} after its release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_changes_extend_but_never_shorten_unless_an_admin_forces() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let base = server.base.clone();
    let http = Client::new();
    let p = send(
        &http,
        http.post(format!("{base}/packages"))
            .bearer_auth(WRITER)
            .json(&json!({"producer": "ci", "subject": "s", "retention_class": "short"})),
        StatusCode::CREATED,
    )
    .await;
    let id = p["id"].as_str().unwrap();
    let finalized = send(
        &http,
        http.post(format!("{base}/packages/{id}/finalize"))
            .bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    let short_expiry = timestamp(&finalized["retention"]["expires_at"]);
    // A hold can be released once; a second release is a conflict.
    let hold = format!("{base}/packages/{id}/legal-hold");
    send(
        &http,
        http.put(&hold)
            .bearer_auth(ADMIN)
            .json(&json!({"reason": "audit"})),
        StatusCode::OK,
    )
    .await;
    for expect in [StatusCode::OK, StatusCode::CONFLICT] {
        send(&http, http.delete(&hold).bearer_auth(ADMIN), expect).await;
    }
    let change = |class: &str, force: bool| {
        http.patch(format!("{base}/packages/{id}/retention"))
            .json(&json!({"retention_class": class, "force": force}))
    };
    let longer = send(
        &http,
        change("standard", false).bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    assert_eq!(longer["retention_class"], "standard");
    assert_eq!(longer["retention"]["class"], "standard");
    let standard_expiry = timestamp(&longer["retention"]["expires_at"]);
    assert_eq!(
        standard_expiry - short_expiry,
        time::Duration::days(365 - 30),
        "expiry counts from finalization"
    );
    let refused = send(
        &http,
        change("ephemeral", false).bearer_auth(WRITER),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(refused["detail"].as_str().unwrap().contains("shortened"));
    send(
        &http,
        change("ephemeral", true).bearer_auth(WRITER),
        StatusCode::FORBIDDEN,
    )
    .await;
    send(
        &http,
        change("nope", false).bearer_auth(WRITER),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let forced = send(
        &http,
        change("ephemeral", true).bearer_auth(ADMIN),
        StatusCode::OK,
    )
    .await;
    assert_eq!(forced["retention"]["class"], "ephemeral");
    let forever = send(
        &http,
        change("permanent", false).bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    assert!(
        forever["retention"].get("expires_at").is_none(),
        "{forever}"
    );
    // The events carry the changes, for the package's tenant.
    let rows = db
        .client()
        .await
        .query(
            "SELECT tenant FROM events WHERE type = 'v1.retention.class_changed'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.get::<_, &str>(0) == "acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_expire_a_thousand_due_packages_exactly_once() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::new("bulk").unwrap();
    crate::support::define_instant_class(reg).await;
    let created = (0..1000).map(|i| {
        let tenant = tenant.clone();
        async move {
            let p = reg
                .create_package(
                    &tenant,
                    NewPackage {
                        producer: "bulk".into(),
                        subject: format!("s{i}"),
                        retention_class: Some("instant".into()),
                        metadata: Default::default(),
                    },
                )
                .await
                .unwrap();
            if i % 10 == 0 {
                reg.ingest_file(
                    &tenant,
                    p.id,
                    IngestRequest {
                        relative_path: RelativePath::new("f").unwrap(),
                        media_type: None,
                        expected_digest: None,
                        replace: false,
                        if_match: None,
                    },
                    body(format!("file {i}").as_bytes(), 4),
                )
                .await
                .unwrap();
            }
            reg.finalize_package(&tenant, p.id, None).await.unwrap();
        }
    });
    // Bounded concurrency: 1,000 at once would only queue on the pool.
    futures::StreamExt::for_each_concurrent(futures::stream::iter(created), 16, |f| f).await;

    let workers: Vec<Killed> = (0..3)
        .map(|_| {
            Killed(worker(
                &env.db,
                &env.dir.path().join("blobs"),
                &["--expire-batch", "20"],
            ))
        })
        .collect();
    // Kill one worker hard while the work is under way: its open batch rolls back and the
    // others take it.
    let client = env.db.client().await;
    let count = || async {
        client
            .query_one(
                "SELECT count(*), count(DISTINCT subject_id) FROM events \
                 WHERE type = 'v1.package.expired'",
                &[],
            )
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut workers = workers;
    let mut killed = false;
    loop {
        let row = count().await;
        let (total, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(total, distinct, "a package expired twice");
        if !killed && total > 0 {
            let mut victim = workers.remove(0);
            victim.0.kill().unwrap();
            killed = true;
        }
        if total == 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "only {total} of 1000 expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed);
    let open: i64 = client
        .query_one(
            "SELECT count(*) FROM packages WHERE status <> 'expired'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
    let files: i64 = client
        .query_one("SELECT count(*) FROM files", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(files, 0, "expired packages' files left the views");
    drop(workers);

    // Replay rebuilds the same retention state from the log.
    let check = artifactstore::events::replay(reg.pool(), true)
        .await
        .unwrap();
    assert_eq!(check.identical, Some(true));
}

#[tokio::test]
async fn replay_reproduces_holds_class_changes_and_expiry() {
    let env = TestEnv::new().await;
    crate::replay::mixed_workload(&env).await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    let page = reg
        .list_packages(
            &tenant,
            &artifactstore::registry::PackageFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let finalized: Vec<_> = page
        .items
        .iter()
        .filter(|p| p.status == artifactstore::registry::PackageStatus::Finalized)
        .collect();
    let open: Vec<_> = page
        .items
        .iter()
        .filter(|p| p.status == artifactstore::registry::PackageStatus::Open)
        .collect();
    reg.set_legal_hold(&tenant, finalized[0].id, "audit".into())
        .await
        .unwrap();
    reg.set_legal_hold(&tenant, open[0].id, "audit".into())
        .await
        .unwrap();
    reg.release_legal_hold(&tenant, open[0].id).await.unwrap();
    reg.change_retention_class(&tenant, finalized[1].id, "permanent".into(), false)
        .await
        .unwrap();
    // Zero grace for open packages: every open one (of every tenant) is abandoned now.
    let client = env.db.client().await;
    let open_everywhere: i64 = client
        .query_one("SELECT count(*) FROM packages WHERE status = 'open'", &[])
        .await
        .unwrap()
        .get(0);
    let expired = reg.expire_due(0, 1000).await.unwrap();
    assert_eq!(expired.len() as i64, open_everywhere);
    assert!(
        expired
            .iter()
            .all(|e| e.reason == artifactstore::retention::DueReason::Abandoned)
    );
    let before = artifactstore::events::dump_views(&client).await.unwrap();
    artifactstore::events::replay(reg.pool(), false)
        .await
        .unwrap();
    assert_eq!(
        artifactstore::events::dump_views(&client).await.unwrap(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_worker_runs_the_jobs_in_the_server() {
    let db = TestDb::new().await;
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_SERVE_WORKER", "true"),
        ],
    );
    let base = server.base.clone();
    let http = Client::new();
    send(
        &http,
        http.put(format!("{base}/retention-classes/instant"))
            .bearer_auth(OPERATOR)
            .json(&json!({"duration_seconds": 1})),
        StatusCode::OK,
    )
    .await;
    let p = send(
        &http,
        http.post(format!("{base}/packages"))
            .bearer_auth(WRITER)
            .json(&json!({"producer": "ci", "subject": "s", "retention_class": "instant"})),
        StatusCode::CREATED,
    )
    .await;
    let id = p["id"].as_str().unwrap();
    send(
        &http,
        http.post(format!("{base}/packages/{id}/finalize"))
            .bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    wait_expired(&http, &base, id, Duration::from_secs(10)).await;
    let usage = send(
        &http,
        http.get(format!("{base}/usage")).bearer_auth(WRITER),
        StatusCode::OK,
    )
    .await;
    assert_eq!(usage["packages"], 0, "{usage}");
}

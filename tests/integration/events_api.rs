//! `GET /events` through the real server: no miss, no reorder, listener loss, tenancy.

use crate::support::Server;
use crate::support::{TestDb, body, random_bytes};
use artifactstore::domain::{Metadata, PackageId, RelativePath, TenantId, Timestamp};
use artifactstore::events::{self, DomainEvent, PackageCreated};
use artifactstore::registry::{IngestRequest, NewPackage};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKENS: &str = "default:read+write:default-token,other:read+write:other-token,\
                      system:admin:system-admin-token";

/// Tails with a given page size until `until` events arrived (or the deadline), returning
/// every event's (sequence, id) in the order received.
async fn tail(
    base: String,
    token: &'static str,
    limit: u32,
    until: usize,
    deadline: Duration,
) -> Vec<(i64, String)> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut since = 0i64;
    let mut seen = Vec::new();
    while seen.len() < until {
        assert!(
            start.elapsed() < deadline,
            "tail stalled at {since} with {} of {until}",
            seen.len()
        );
        let resp = http
            .get(format!("{base}/events?since={since}&limit={limit}&wait=2"))
            .bearer_auth(token)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let header: i64 = resp.headers()["next-since"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let page: Value = resp.json().await.unwrap();
        assert_eq!(page["next_since"], header);
        for e in page["events"].as_array().unwrap() {
            let seq = e["sequence"].as_i64().unwrap();
            assert!(seq > since, "reordered: {seq} after {since}");
            since = seq;
            seen.push((seq, e["id"].as_str().unwrap().to_owned()));
        }
        since = since.max(header);
    }
    seen
}

fn created(tenant: &TenantId, i: usize) -> PackageCreated {
    PackageCreated {
        package_id: PackageId::generate(),
        tenant: tenant.clone(),
        producer: "rolled-back".into(),
        subject: format!("{i}"),
        retention_class: "short".into(),
        metadata: Metadata::default(),
        created_at: Timestamp::parse("2026-11-22T00:00:00Z").unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_producers_four_consumers_no_miss_no_reorder() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(artifactstore::storage::local::LocalStore::open("local", dir.path()).unwrap());
    let registry =
        artifactstore::Registry::new(db.pool(16), artifactstore::storage::Backends::single(store));
    let tenant = TenantId::default_tenant();
    const PRODUCERS: usize = 8;
    const ROUNDS: usize = 12;
    // Each round commits: package created + 2 files = 3 events; and one rolled-back event.
    let expected = PRODUCERS * ROUNDS * 3;

    let consumers: Vec<_> = [3u32, 5, 7, 11]
        .into_iter()
        .map(|limit| {
            tokio::spawn(tail(
                server.base.clone(),
                "default-token",
                limit,
                expected,
                Duration::from_secs(90),
            ))
        })
        .collect();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let registry = registry.clone();
        let tenant = tenant.clone();
        let pool = db.pool(1);
        producers.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let package = registry
                    .create_package(
                        &tenant,
                        NewPackage {
                            producer: format!("p{p}"),
                            subject: format!("r{r}"),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                for f in 0..2 {
                    let req = IngestRequest {
                        relative_path: RelativePath::new(&format!("f{f}")).unwrap(),
                        media_type: None,
                        expected_digest: None,
                        replace: false,
                        if_match: None,
                    };
                    registry
                        .ingest_file(
                            &tenant,
                            package.id,
                            req,
                            body(&random_bytes(100, (p * 1000 + r * 10 + f) as u64), 50),
                        )
                        .await
                        .unwrap();
                }
                // A transaction that records events and rolls back.
                let mut client = pool.get().await.unwrap();
                let tx = client.transaction().await.unwrap();
                events::record(&tx, vec![DomainEvent::new(created(&tenant, r))])
                    .await
                    .unwrap();
                tx.rollback().await.unwrap();
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    registry.sequencer().numbered().await;
    let client = db.client().await;
    let truth: Vec<(i64, String)> = client
        .query(
            "SELECT sequence, id::text FROM events ORDER BY sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(truth.len(), expected);
    assert_eq!(truth.last().unwrap().0 as usize, expected, "gapless");
    for c in consumers {
        assert_eq!(
            c.await.unwrap(),
            truth,
            "a consumer saw exactly the committed events, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listener_loss_delays_but_never_loses_events() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let pool = db.pool(2);
    let sequencer = events::Sequencer::new(pool.clone());
    let tenant = TenantId::default_tenant();
    let commit = |i: usize| {
        let pool = pool.clone();
        let tenant = tenant.clone();
        let sequencer = sequencer.clone();
        async move {
            let mut client = pool.get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            let mut p = created(&tenant, i);
            p.producer = "kept".into();
            let recorded = events::record(&tx, vec![DomainEvent::new(p)])
                .await
                .unwrap();
            events::commit(tx, &recorded, &sequencer).await.unwrap();
        }
    };
    // Wait until the listener is connected.
    let admin = db.client().await;
    let listener_pid = || async {
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
                &[&artifactstore::events::bus::LISTENER_APPLICATION_NAME],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    };
    let start = Instant::now();
    while listener_pid().await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "listener never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Exactly one LISTEN connection from the server.
    let listening: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()", &[&artifactstore::events::bus::LISTENER_APPLICATION_NAME])
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 1);

    let consumer = tokio::spawn(tail(
        server.base.clone(),
        "default-token",
        4,
        30,
        Duration::from_secs(30),
    ));
    for i in 0..10 {
        commit(i).await;
    }
    // Kill the LISTEN backend from SQL, commit while it is down, and after it comes back.
    let old = listener_pid().await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap();
    for i in 10..20 {
        commit(i).await;
    }
    let start = Instant::now();
    loop {
        match listener_pid().await {
            Some(pid) if pid != old => break,
            _ => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "listener did not reconnect within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for i in 20..30 {
        commit(i).await;
    }
    let seen = consumer.await.unwrap();
    let sequences: Vec<i64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, (1..=30).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_events() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    for (token, n) in [("default-token", 3), ("other-token", 2)] {
        for i in 0..n {
            let resp = http
                .post(format!("{}/packages", server.base))
                .bearer_auth(token)
                .json(&serde_json::json!({"producer": "p", "subject": format!("{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
        }
    }
    for (token, tenant, n) in [("default-token", "default", 3), ("other-token", "other", 2)] {
        let page: Value = http
            .get(format!("{}/events?wait=0", server.base))
            .bearer_auth(token)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), n);
        assert!(events.iter().all(|e| e["tenant"] == tenant));
        assert_eq!(page["next_since"], 5, "the position covers the whole log");
    }
    // CBOR is the default and decodes to the same page.
    let resp = http
        .get(format!("{}/events?wait=0", server.base))
        .bearer_auth("other-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/cbor");
    let cbor = resp.bytes().await.unwrap();
    let value = artifactstore::manifest::canonical::decode_value(&cbor).expect("canonical CBOR");
    let json = artifactstore::manifest::canonical::to_json(&value).unwrap();
    assert_eq!(json["events"].as_array().unwrap().len(), 2);
    assert_eq!(json["events"][0]["payload"]["tenant"], "other");
    // A wait with nothing to come ends with an empty page and the position.
    let start = Instant::now();
    let resp = http
        .get(format!("{}/events?since=5&wait=1", server.base))
        .bearer_auth("other-token")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    let page: Value = resp.json().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(page["events"].as_array().unwrap().len(), 0);
    assert_eq!(page["next_since"], 5);
}

/// `events.waiting_requests` of the server's `/health` (the operator's to see).
async fn waiting(http: &reqwest::Client, base: &str) -> u64 {
    let health: Value = http
        .get(format!("{base}/health"))
        .bearer_auth("system-admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["events"]["listening"], true, "{health}");
    health["events"]["waiting_requests"].as_u64().unwrap()
}

async fn until_waiting(http: &reqwest::Client, base: &str, want: u64, bound: Duration) {
    let start = Instant::now();
    loop {
        let now = waiting(http, base).await;
        if now == want {
            return;
        }
        assert!(
            start.elapsed() < bound,
            "{now} requests still wait after {bound:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_end_when_the_client_goes_away_and_are_answered_at_shutdown() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let base = server.base.clone();
    let http = reqwest::Client::new();
    assert_eq!(waiting(&http, &base).await, 0);

    // A client that asks for a minute's wait and then hangs up, over a raw socket.
    for _ in 0..3 {
        let addr = base.strip_prefix("http://").unwrap();
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(
                b"GET /events?wait=60 HTTP/1.1\r\nHost: test\r\n\
                  Authorization: Bearer default-token\r\n\r\n",
            )
            .await
            .unwrap();
        until_waiting(&http, &base, 1, Duration::from_secs(5)).await;
        drop(socket);
        // The request ends with the connection, long before its minute is up.
        until_waiting(&http, &base, 0, Duration::from_secs(3)).await;
    }

    // At shutdown, waiters are answered at once with what they have (an empty page and the
    // position), and the server exits cleanly.
    let polls: Vec<_> = (0..4)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let resp = http
                    .get(format!("{base}/events?wait=60"))
                    .bearer_auth("default-token")
                    .header("Accept", "application/json")
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let page: Value = resp.json().await.unwrap();
                (status, page)
            })
        })
        .collect();
    until_waiting(&http, &base, 4, Duration::from_secs(5)).await;
    let start = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || server.terminate());
    for poll in polls {
        let (status, page) = poll.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(page["events"].as_array().unwrap().len(), 0);
        assert_eq!(page["next_since"], 0);
    }
    assert!(stopped.await.unwrap().success(), "SIGTERM is a clean exit");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with waiters",
        start.elapsed()
    );
}

/// A page ends after the event that takes its payloads past
/// `ARTIFACTSTORE_MAX_EVENT_PAGE_BYTES` (one event always comes, however large), and the
/// tailer still gets every event once, in order, by following `next_since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_end_at_their_byte_bound_and_lose_nothing() {
    let db = TestDb::new().await;
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_MAX_EVENT_PAGE_BYTES", "8KiB"),
        ],
    );
    let http = reqwest::Client::new();
    // Twelve packages finalized with ~3 KiB of provenance each (one finalize event holds its
    // manifest), one with ~20 KiB: more than a whole page alone.
    for i in 0..13 {
        let id = server
            .create_package(&http, "default-token", &format!("big{i}"))
            .await;
        let note = "x".repeat(if i == 6 { 20_000 } else { 3_000 });
        let resp = http
            .post(server.url(&format!("/packages/{id}/finalize")))
            .bearer_auth("default-token")
            .json(&serde_json::json!({"provenance": {"predicate": {"note": note}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    let mut since = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let resp = http
            .get(server.url(&format!("/events?since={since}&limit=1000&wait=0")))
            .bearer_auth("default-token")
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let page: Value = resp.json().await.unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        pages += 1;
        let bytes: usize = events.iter().map(|e| e["payload"].to_string().len()).sum();
        let last = events.last().unwrap()["payload"].to_string().len();
        // Past the bound only by the last event (JSON payloads run a little larger than
        // the CBOR the bound counts).
        assert!(bytes - last <= 9 * 1024, "a page of {bytes} bytes");
        seen.extend(events.iter().map(|e| e["sequence"].as_i64().unwrap()));
        since = page["next_since"].as_i64().unwrap();
    }
    assert_eq!(
        seen,
        (1..=26).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(pages >= 5, "{pages} pages");
}

//! Database connections: abandoned reads and a starved pool never wedge the server.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_reads_abandoned_by_their_clients_never_wedge_the_pool() {
    let db = TestDb::new().await;
    let server = start(&db, &[("ARTIFACTSTORE_DB_POOL_SIZE", "4")]);
    let addr = address(&server);
    for round in 0..2 {
        let storm = (0..200).map(|i| {
            let addr = addr.clone();
            async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                let request = format!(
                    "GET /events?since=0&wait=0&type=abandoned-{round}-{i} HTTP/1.1\r\n\
                     Host: x\r\nAuthorization: Bearer {ALPHA_READER}\r\n\r\n"
                );
                s.write_all(request.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis((i % 4) as u64)).await;
                drop(s);
            }
        });
        futures::future::join_all(storm).await;
    }
    let http = Client::new();
    let started = Instant::now();
    let listed = list_within(&http, &server, Duration::from_secs(5)).await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let health = http
        .get(server.url("/health"))
        .bearer_auth(ALPHA_ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(health, StatusCode::OK).await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_gets_no_connection_in_time_is_a_503_with_retry_after() {
    let db = TestDb::new().await;
    let server = start(
        &db,
        &[
            ("ARTIFACTSTORE_DB_POOL_SIZE", "1"),
            ("ARTIFACTSTORE_DB_POOL_TIMEOUT_SECONDS", "1"),
        ],
    );
    let http = Client::new();
    // Warm the one connection, then hold it: a listing that waits on a table lock.
    json_of(
        http.get(server.url("/packages"))
            .bearer_auth(ALPHA_READER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE packages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let held = tokio::spawn({
        let http = http.clone();
        let url = server.url("/packages");
        async move { http.get(url).bearer_auth(ALPHA_READER).send().await }
    });
    // Until the held listing has the connection: it waits on the lock.
    let probe = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = probe
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listing never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let refused = list_within(&http, &server, Duration::from_secs(10)).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    tx.rollback().await.unwrap();
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
}

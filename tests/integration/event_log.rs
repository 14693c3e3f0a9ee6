//! The event log: gapless, commit-ordered sequence numbers under concurrent writers.

use crate::support::TestDb;
use artifactstore::domain::{Metadata, PackageId, TenantId, Timestamp};
use artifactstore::events::{self, DomainEvent, PackageCreated};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn created(tenant: &TenantId, writer: usize, i: usize) -> DomainEvent {
    DomainEvent::new(PackageCreated {
        package_id: PackageId::generate(),
        tenant: tenant.clone(),
        producer: format!("writer-{writer}"),
        subject: format!("item-{i}"),
        retention_class: "short".into(),
        metadata: Metadata::default(),
        created_at: Timestamp::parse("2026-11-22T00:00:00Z").unwrap(),
    })
}

/// 16 writers append concurrently through three sequencers (three processes), every fifth
/// transaction rolling back after recording its events, while a reader tails from sequence 1
/// in small pages. The reader must see every committed event exactly once, in order, with no
/// holes, and never an uncommitted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_with_rollbacks_leave_no_gaps_and_no_reorders() {
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 60;
    let db = Arc::new(TestDb::new().await);
    let tenant = TenantId::default_tenant();
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let db = db.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let client = db.client().await;
            let mut seen = Vec::new();
            let mut since = 0i64;
            let mut chain = events::chain::GENESIS;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = events::read_after(&client, since, 7, None, None)
                    .await
                    .unwrap();
                for event in &batch {
                    // Each page continues exactly where the last one ended: a hole here would
                    // mean an event became visible after a later one.
                    assert_eq!(event.sequence, since + 1, "gap or reorder after {since}");
                    // Every event a reader sees is chained to the one before it.
                    let digest = events::chain::digest(event);
                    chain = events::chain::link(&chain, event.sequence, &digest);
                    assert_eq!(event.chain, Some(chain), "event {}", event.sequence);
                    since = event.sequence;
                    seen.push(event.id);
                }
                if batch.is_empty() {
                    if finished {
                        break;
                    }
                    assert!(Instant::now() < deadline, "reader timed out");
                    tokio::task::yield_now().await;
                }
            }
            (seen, chain)
        })
    };

    let sequencers: Vec<events::Sequencer> =
        (0..3).map(|_| events::Sequencer::new(db.pool(1))).collect();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db = db.clone();
        let tenant = tenant.clone();
        let sequencer = sequencers[w % sequencers.len()].clone();
        writers.push(tokio::spawn(async move {
            let pool = db.pool(1);
            let mut client = pool.get().await.unwrap();
            let mut committed = Vec::new();
            for i in 0..PER_WRITER {
                let tx = client.transaction().await.unwrap();
                // Some transactions append two events at once.
                let mut batch = vec![created(&tenant, w, i)];
                if i % 7 == 3 {
                    batch.push(created(&tenant, w, i + 1000));
                }
                let stored = events::record(&tx, batch).await.unwrap();
                tokio::task::yield_now().await;
                if (w + i) % 5 == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    events::commit(tx, &stored, &sequencer).await.unwrap();
                    committed.extend(stored.iter().map(|e| e.id));
                }
            }
            committed
        }));
    }
    let mut committed = HashSet::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    sequencers[0].numbered().await;
    done.store(true, Ordering::SeqCst);
    let (seen, chain) = reader.await.unwrap();

    assert_eq!(
        seen.len(),
        committed.len(),
        "every committed event exactly once"
    );
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), committed);
    let client = db.client().await;
    let (count, max): (i64, i64) = {
        let row = client
            .query_one("SELECT count(*), max(sequence) FROM events", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(count, max, "sequence 1..=max has no holes");
    let last_chain: Vec<u8> = client
        .query_one("SELECT last_chain FROM event_counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        last_chain, chain,
        "the counter keeps the chain through the last event"
    );
    assert_eq!(count as usize, committed.len());
    // Rolled-back transactions left no trace in the views either.
    let packages: i64 = client
        .query_one("SELECT count(*) FROM packages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(packages as usize, committed.len());
}

/// A numbering pass reads a few rows by index and compiles nothing, on a new store (an empty
/// log, no statistics yet: the plans its prepared statements keep are made then). Refusing
/// sequential scans priced the counter's one-row table far above `jit_above_cost`, and every
/// statement on it was JIT-compiled (~60 ms of CPU each, three per pass).
#[tokio::test]
async fn numbering_pass_plans_read_by_index_and_compile_nothing() {
    let db = TestDb::new().await;
    // Every connection the library makes starts without JIT (the cluster's default is on).
    let pooled = db.pool(1).get().await.unwrap();
    let jit: String = pooled.query_one("SHOW jit", &[]).await.unwrap().get(0);
    assert_eq!(jit, "off");
    let plans = events::sequencer::pass_plans(&db.pool(1)).await.unwrap();
    assert_eq!(plans.len(), 7, "every statement of a pass: {plans:#?}");
    for plan in &plans {
        assert!(!plan.contains("JIT"), "compiled: {plan}");
        assert!(
            !plan.contains("Seq Scan on events"),
            "a scan of the log: {plan}"
        );
        assert!(
            !plan.contains("Hash Join") && !plan.contains("Merge Join"),
            "a join over the log: {plan}"
        );
    }
}

/// A writer that dies between its COMMIT and its numbering pass leaves its events committed
/// but unnumbered: readers do not see them yet, and a numbering pass that dies before its
/// COMMIT numbers nothing. The next pass of any process's sequencer numbers them, before the
/// events committed after them.
#[tokio::test]
async fn events_left_unnumbered_by_a_crash_are_numbered_by_the_next_pass_in_order() {
    let db = TestDb::new().await;
    let pool = db.pool(2);
    let tenant = TenantId::default_tenant();
    let reader = db.client().await;
    let visible = || async {
        events::read_after(&reader, 0, 10, None, None)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.sequence, e.id))
            .collect::<Vec<_>>()
    };

    // Committed, and the writer died before asking for a pass.
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let orphan = events::record(&tx, vec![created(&tenant, 0, 0)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    drop(client);
    assert!(
        visible().await.is_empty(),
        "an unnumbered event is not shown"
    );

    // A pass killed before its COMMIT.
    let dying_pool = db.pool(1);
    let mut dying = dying_pool.get().await.unwrap();
    let pid: i32 = dying
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tx = dying.transaction().await.unwrap();
    assert_eq!(events::number_committed(&tx).await.unwrap(), 1);
    reader
        .execute("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .await
        .unwrap();
    assert!(tx.commit().await.is_err(), "the killed pass cannot commit");
    assert!(
        visible().await.is_empty(),
        "the killed pass numbered nothing"
    );

    // Another process's writer: its pass numbers the orphan first, then its own event.
    let sequencer = events::Sequencer::new(db.pool(1));
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let later = events::record(&tx, vec![created(&tenant, 0, 1)])
        .await
        .unwrap();
    events::commit(tx, &later, &sequencer).await.unwrap();
    sequencer.numbered().await;
    assert_eq!(visible().await, vec![(1, orphan[0].id), (2, later[0].id)]);
    let counter: i64 = reader
        .query_one("SELECT last_sequence FROM event_counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(counter, 2);

    // Left alone, a started sequencer numbers a dead writer's events within a tick.
    sequencer.start();
    let tx = client.transaction().await.unwrap();
    let orphan = events::record(&tx, vec![created(&tenant, 0, 2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let deadline = Instant::now() + events::sequencer::TICK * 5;
    while visible().await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "a tick numbers what a dead writer left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(visible().await[2], (3, orphan[0].id));
}

#[tokio::test]
async fn the_log_is_append_only() {
    let db = TestDb::new().await;
    let pool = db.pool(1);
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    events::record(&tx, vec![created(&TenantId::default_tenant(), 0, 0)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for sql in [
        "UPDATE events SET type = 'x'",
        "UPDATE events SET sequence = 1, type = 'x'",
        "SELECT 1 FROM event_counter FOR UPDATE; UPDATE events SET sequence = 1; \
         UPDATE events SET sequence = 2",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert!(format!("{err:?}").contains("append-only"), "{sql}: {err:?}");
    }
}

#[tokio::test]
async fn tenant_and_type_filters() {
    let db = TestDb::new().await;
    let pool = db.pool(1);
    let mut client = pool.get().await.unwrap();
    let a = TenantId::new("tenant-a").unwrap();
    let b = TenantId::new("tenant-b").unwrap();
    client
        .batch_execute("INSERT INTO tenants (id) VALUES ('tenant-a'), ('tenant-b')")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    let recorded = events::record(
        &tx,
        vec![created(&a, 0, 0), created(&b, 0, 1), created(&a, 0, 2)],
    )
    .await
    .unwrap();
    let sequencer = events::Sequencer::new(db.pool(1));
    events::commit(tx, &recorded, &sequencer).await.unwrap();
    sequencer.numbered().await;
    let only_a = events::read_after(&**client, 0, 100, Some(&a), None)
        .await
        .unwrap();
    assert_eq!(
        only_a.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(only_a.iter().all(|e| e.tenant == a));
    assert_eq!(
        events::read_after(&**client, 0, 100, None, Some("v1.package."))
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        events::read_after(&**client, 0, 100, None, Some("v1.file."))
            .await
            .unwrap()
            .len(),
        0
    );
    // LIKE metacharacters in the prefix are literal.
    assert_eq!(
        events::read_after(&**client, 0, 100, None, Some("v1%"))
            .await
            .unwrap()
            .len(),
        0
    );
}

/// Identical page reads in flight at the same time go to PostgreSQL once and share the answer;
/// a different question, or the same one asked after the answer came, is read afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_tail_reads_in_flight_are_sent_once() {
    let env = crate::support::TestEnv::new().await;
    let tenant = TenantId::default_tenant();
    for i in 0..3 {
        env.registry
            .create_package(
                &tenant,
                artifactstore::registry::NewPackage {
                    producer: "p".into(),
                    subject: format!("s{i}"),
                    retention_class: None,
                    metadata: Metadata::default(),
                },
            )
            .await
            .unwrap();
    }
    env.registry.sequencer().numbered().await;
    let reader = events::TailReader::new(env.registry.pool().clone());
    let pages =
        futures::future::join_all((0..200).map(|_| reader.page(&tenant, 0, 100, None, 0, ())))
            .await;
    assert_eq!(reader.reads(), 1, "200 identical reads, one query");
    for page in &pages {
        let page = page.as_ref().unwrap();
        assert_eq!(page.events.len(), 3);
        assert_eq!(page.scanned_to, 3);
    }
    let (a, b) = futures::join!(
        reader.page(&tenant, 1, 100, None, 0, ()),
        reader.page(&tenant, 0, 100, Some("v1.file."), 0, ())
    );
    assert_eq!(reader.reads(), 3);
    // Askers after different numbering passes never share a read (a read begun before an
    // asker's pass could lack the events that pass numbered).
    let (c, d) = futures::join!(
        reader.page(&tenant, 0, 100, None, 7, ()),
        reader.page(&tenant, 0, 100, None, 8, ())
    );
    assert_eq!(reader.reads(), 5);
    assert_eq!((c.unwrap().events.len(), d.unwrap().events.len()), (3, 3));
    assert_eq!(a.unwrap().events.len(), 2);
    assert_eq!(b.unwrap().events.len(), 0);
    // Answered questions are not cached: a later asker may be waiting for newer events.
    env.registry
        .create_package(
            &tenant,
            artifactstore::registry::NewPackage {
                producer: "p".into(),
                subject: "late".into(),
                retention_class: None,
                metadata: Metadata::default(),
            },
        )
        .await
        .unwrap();
    env.registry.sequencer().numbered().await;
    let again = reader.page(&tenant, 0, 100, None, 0, ()).await.unwrap();
    assert_eq!(reader.reads(), 6);
    assert_eq!(again.events.len(), 4);
}

/// Statements a mutation sends together run in the order written, whatever the connection has
/// prepared already. tokio-postgres sends a request when it is first polled, so an execute
/// still waiting for its statement to be prepared could be overtaken by one prepared earlier:
/// the `retention_state` row before its package, a file's location before its blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_sent_together_run_in_order_whatever_the_connection_has_prepared() {
    use artifactstore::registry::IngestRequest;
    // The later statement of two sent together (copies of the registry's own text).
    const LATER: [&str; 2] = [
        "INSERT INTO retention_state (package_id, tenant, expires_at, legal_hold) \
         VALUES ($1, $2, NULL, false)",
        "INSERT INTO storage_locations (blake3, backend_id, key, status, stored_at) \
         SELECT DISTINCT ON (b, k) b, k, y, 'present', t \
         FROM unnest($1::bytea[], $2::text[], $3::text[], $4::timestamptz[]) \
              WITH ORDINALITY AS u(b, k, y, t, o) \
         ORDER BY b, k, o \
         ON CONFLICT (blake3, backend_id) DO UPDATE SET status = 'present', key = EXCLUDED.key \
         WHERE storage_locations.status <> 'present'",
    ];
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // One connection, which has prepared the later statements and not the earlier ones.
    let pool = artifactstore::db::pool(&db.url, 1).unwrap();
    {
        let client = pool.get().await.unwrap();
        for sql in LATER {
            client.prepare_cached(sql).await.unwrap();
        }
    }
    let store = artifactstore::storage::local::LocalStore::open("local", dir.path()).unwrap();
    let registry = artifactstore::Registry::new(
        pool.clone(),
        artifactstore::storage::Backends::single(Arc::new(store)),
    );
    let tenant = TenantId::default_tenant();
    let work = async {
        let package = crate::support::package(&registry).await;
        let request = IngestRequest {
            relative_path: artifactstore::domain::RelativePath::new("a.txt").unwrap(),
            media_type: None,
            expected_digest: None,
            replace: false,
            if_match: None,
        };
        let data = crate::support::random_bytes(1000, 9);
        registry
            .ingest_file(
                &tenant,
                package.id,
                request,
                crate::support::body(&data, 100),
            )
            .await
            .unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("no deadlock on one connection");
    // The copies above are the very statements the registry ran (else this checks nothing).
    let client = pool.get().await.unwrap();
    for sql in LATER {
        let prepared: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
                &[&sql],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            prepared, 1,
            "the test's copy of a statement is stale: {sql}"
        );
    }
}

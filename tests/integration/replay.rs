//! Replay rebuilds every view from the log, byte for byte.

use crate::support::{TestEnv, body, random_bytes};
use artifactstore::domain::{Metadata, RelativePath, TenantId};
use artifactstore::events;
use artifactstore::registry::{IngestRequest, NewPackage};
use std::collections::BTreeMap;

fn request(path: &str, replace: bool) -> IngestRequest {
    IngestRequest {
        relative_path: RelativePath::new(path).unwrap(),
        media_type: Some("application/x-test".into()),
        expected_digest: None,
        replace,
        if_match: None,
    }
}

/// A mixed workload: two tenants, several packages, shared (deduplicated) bytes, replaced
/// files, failed ingests, finalized and open packages.
pub async fn mixed_workload(env: &TestEnv) {
    let reg = &env.registry;
    for (t, tenant) in ["default", "team-b"].iter().enumerate() {
        let tenant = TenantId::new(tenant).unwrap();
        for p in 0..4 {
            let meta = Metadata::new(BTreeMap::from([("run".into(), format!("{t}-{p}"))])).unwrap();
            let package = reg
                .create_package(
                    &tenant,
                    NewPackage {
                        producer: format!("ci-{t}"),
                        subject: format!("commit-{p}"),
                        retention_class: Some(
                            ["ephemeral", "standard", "permanent", "long"][p].into(),
                        ),
                        metadata: meta,
                    },
                )
                .await
                .unwrap();
            for f in 0..3 {
                // f == 0 is the same bytes in every package: deduplicated.
                let data = random_bytes(
                    1000 + f * 777,
                    if f == 0 {
                        42
                    } else {
                        (t * 100 + p * 10 + f) as u64
                    },
                );
                reg.ingest_file(
                    &tenant,
                    package.id,
                    request(&format!("dir/file-{f}.bin"), false),
                    body(&data, 300),
                )
                .await
                .unwrap();
            }
            reg.ingest_file(
                &tenant,
                package.id,
                request("dir/file-1.bin", true),
                body(b"replaced", 3),
            )
            .await
            .unwrap();
            // A failing ingest (duplicate path) records nothing.
            assert!(
                reg.ingest_file(
                    &tenant,
                    package.id,
                    request("dir/file-2.bin", false),
                    body(b"x", 1)
                )
                .await
                .is_err()
            );
            if p % 2 == 0 {
                // Half of them with the producer's provenance in their manifests.
                let supplied = (p % 4 == 0).then(|| {
                    artifactstore::manifest::SuppliedProvenance::new(
                        Some("https://example.com/ci/v1".into()),
                        serde_json::json!({"run": p, "steps": ["build", "test"], "ok": true}),
                        4096,
                    )
                    .unwrap()
                });
                reg.finalize_package_with(&tenant, package.id, Some("tester".into()), supplied)
                    .await
                    .unwrap();
            }
            // Removals: a file from an open package, an open package abandoned, a finalized
            // one withdrawn (the shared bytes stay referenced by the other packages).
            let path = RelativePath::new("dir/file-0.bin").unwrap();
            match p {
                1 => drop(
                    reg.remove_file(&tenant, package.id, &path, "tester", None)
                        .await
                        .unwrap(),
                ),
                2 if t == 1 => drop(
                    reg.remove_package(&tenant, package.id, "admin", Some("recalled".into()), true)
                        .await
                        .unwrap(),
                ),
                3 if t == 0 => drop(
                    reg.remove_package(&tenant, package.id, "tester", None, false)
                        .await
                        .unwrap(),
                ),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn replay_rebuilds_identical_views() {
    let env = TestEnv::new().await;
    mixed_workload(&env).await;
    let client = env.db.client().await;
    let before = events::dump_views(&client).await.unwrap();
    assert!(before.len() > 1000, "the workload produced views");

    let report = events::replay(env.registry.pool(), false).await.unwrap();
    assert!(report.events > 40, "{report:?}");
    let after = events::dump_views(&client).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&after)
    );
    assert_eq!(before, after);

    // The check mode agrees, and changes nothing.
    let check = events::replay(env.registry.pool(), true).await.unwrap();
    assert_eq!(check.identical, Some(true));
    assert_eq!(events::dump_views(&client).await.unwrap(), before);
}

#[tokio::test]
async fn replay_check_detects_views_that_drifted_from_the_log() {
    let env = TestEnv::new().await;
    mixed_workload(&env).await;
    let client = env.db.client().await;
    client
        .batch_execute("UPDATE packages SET producer = 'tampered' WHERE file_count > 0")
        .await
        .unwrap();
    let check = events::replay(env.registry.pool(), true).await.unwrap();
    assert_eq!(check.identical, Some(false));
    // A real replay repairs the views from the log.
    events::replay(env.registry.pool(), false).await.unwrap();
    let tampered: i64 = client
        .query_one(
            "SELECT count(*) FROM packages WHERE producer = 'tampered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tampered, 0);
}

/// The view tables' foreign keys, as the catalog has them.
async fn view_foreign_keys(client: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    client
        .query(
            "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// Replay drops the views' foreign keys for the load and adds them back: afterwards the
/// catalog has every one as before, and they still refuse what they refused.
#[tokio::test]
async fn replay_leaves_the_foreign_keys_as_they_were() {
    let env = TestEnv::new().await;
    mixed_workload(&env).await;
    let client = env.db.client().await;
    let keys = view_foreign_keys(&client).await;
    assert!(
        keys.iter().any(|(t, _, _)| t == "files"),
        "the views have foreign keys: {keys:?}"
    );
    events::replay(env.registry.pool(), false).await.unwrap();
    assert_eq!(view_foreign_keys(&client).await, keys);
    let refused = client
        .batch_execute(
            "INSERT INTO retention_state (package_id, tenant, legal_hold) \
             VALUES (gen_random_uuid(), 'default', false)",
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
}

/// A log whose views would break a foreign key (a package of a retention class nobody
/// defined, recorded while the key was dropped by hand) fails to replay, naming the key, and
/// leaves the views and the keys as they were.
#[tokio::test]
async fn a_replay_that_breaks_a_foreign_key_fails_and_changes_nothing() {
    let env = TestEnv::new().await;
    mixed_workload(&env).await;
    let client = env.db.client().await;
    client
        .batch_execute("ALTER TABLE packages DROP CONSTRAINT packages_retention_class_fkey")
        .await
        .unwrap();
    let package_id = artifactstore::domain::PackageId::generate();
    let mut db = env.registry.pool().get().await.unwrap();
    let tx = db.transaction().await.unwrap();
    let event = events::DomainEvent::new(events::PackageCreated {
        package_id,
        tenant: TenantId::default_tenant(),
        producer: "p".into(),
        subject: "s".into(),
        retention_class: "never-defined".into(),
        metadata: Metadata::default(),
        created_at: artifactstore::domain::Timestamp::parse("2026-12-07T00:00:00Z").unwrap(),
    });
    let recorded = events::record(&tx, vec![event]).await.unwrap();
    events::commit(tx, &recorded, env.registry.sequencer())
        .await
        .unwrap();
    // The views without it, the key back: consistent views, a log that breaks the key.
    client
        .execute(
            "DELETE FROM retention_state WHERE package_id = $1",
            &[&package_id.0],
        )
        .await
        .unwrap();
    client
        .execute("DELETE FROM packages WHERE id = $1", &[&package_id.0])
        .await
        .unwrap();
    client
        .batch_execute(
            "ALTER TABLE packages ADD CONSTRAINT packages_retention_class_fkey \
             FOREIGN KEY (retention_class) REFERENCES retention_classes (name)",
        )
        .await
        .unwrap();
    let (views, keys) = (
        events::dump_views(&client).await.unwrap(),
        view_foreign_keys(&client).await,
    );

    for check in [true, false] {
        let error = events::replay(env.registry.pool(), check)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("packages_retention_class_fkey"),
            "check {check}: {error}"
        );
    }
    assert_eq!(events::dump_views(&client).await.unwrap(), views);
    assert_eq!(view_foreign_keys(&client).await, keys);
}

/// A role that may write the views but does not own them cannot drop their foreign keys, nor
/// lock the tables they name (it may only read and insert into `tenants` and
/// `retention_classes`): its replay locks the views alone and checks the keys row by row, with
/// the same views.
#[tokio::test]
async fn a_role_that_does_not_own_the_views_replays_them_all_the_same() {
    let env = TestEnv::new().await;
    mixed_workload(&env).await;
    let client = env.db.client().await;
    let (views, keys) = (
        events::dump_views(&client).await.unwrap(),
        view_foreign_keys(&client).await,
    );
    let role = format!("r_{}", env.db.name);
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'not-the-owner'; \
             GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}; \
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}; \
             REVOKE UPDATE, DELETE, TRUNCATE ON tenants, retention_classes FROM {role}"
        ))
        .await
        .unwrap();
    let url = url::Url::parse(&env.db.url).unwrap();
    let mut theirs = url.clone();
    theirs.set_username(&role).unwrap();
    theirs.set_password(Some("not-the-owner")).unwrap();
    let pool = artifactstore::db::pool(theirs.as_str(), 2).unwrap();
    let report = events::replay(&pool, false).await;
    drop(pool);
    client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
    assert!(report.unwrap().events > 40);
    assert_eq!(events::dump_views(&client).await.unwrap(), views);
    assert_eq!(view_foreign_keys(&client).await, keys);
}

/// Replay applies runs of ingests set-based, live ingests one at a time: both must agree where
/// it is subtle: the same bytes under several paths in one run, and a blob that became
/// unreferenced and was ingested again.
#[tokio::test]
async fn set_based_replay_of_ingest_runs_equals_one_at_a_time() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    crate::support::define_instant_class(reg).await;
    let shared = random_bytes(3000, 7);
    let tenant_ref = &tenant;
    let package = |class: &'static str| async move {
        reg.create_package(
            tenant_ref,
            NewPackage {
                producer: "p".into(),
                subject: "s".into(),
                retention_class: Some(class.into()),
                metadata: Metadata::default(),
            },
        )
        .await
        .unwrap()
        .id
    };
    // A package that expires, leaving `shared` unreferenced.
    let gone = package("instant").await;
    reg.ingest_file(&tenant, gone, request("x", false), body(&shared, 1000))
        .await
        .unwrap();
    reg.finalize_package(&tenant, gone, None).await.unwrap();
    assert_eq!(reg.expire_due(3600, 10).await.unwrap().len(), 1);
    // Then one run of ingests: the unreferenced bytes again, under three paths, and others.
    let p = package("standard").await;
    for (i, data) in [
        shared.clone(),
        random_bytes(100, 8),
        shared.clone(),
        shared.clone(),
    ]
    .iter()
    .enumerate()
    {
        reg.ingest_file(&tenant, p, request(&format!("f{i}"), false), body(data, 64))
            .await
            .unwrap();
    }
    let client = env.db.client().await;
    let unreferenced: Option<time::OffsetDateTime> = client
        .query_one(
            "SELECT unreferenced_since FROM blobs WHERE sha256 = $1",
            &[&<sha2::Sha256 as sha2::Digest>::digest(&shared).as_slice()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unreferenced, None, "ingested again: referenced");
    let before = events::dump_views(&client).await.unwrap();
    events::replay(reg.pool(), false).await.unwrap();
    assert_eq!(events::dump_views(&client).await.unwrap(), before);
}

/// Runs of package creations (tenants, metadata and classes of their own) are replayed with
/// set-based statements: the views equal those the live, one-at-a-time creations made.
#[tokio::test]
async fn set_based_replay_of_creation_runs_equals_one_at_a_time() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let mut created = Vec::new();
    for i in 0..25 {
        let tenant = TenantId::new(["default", "team-b", "team-c"][i % 3]).unwrap();
        let meta = Metadata::new(BTreeMap::from([
            ("n".into(), i.to_string()),
            ("k".into(), "v".into()),
        ]))
        .unwrap();
        let package = reg
            .create_package(
                &tenant,
                NewPackage {
                    producer: format!("p{}", i % 4),
                    subject: format!("s{i}"),
                    retention_class: Some(["standard", "permanent", "long"][i % 3].into()),
                    metadata: if i % 5 == 0 {
                        Metadata::default()
                    } else {
                        meta
                    },
                },
            )
            .await
            .unwrap();
        created.push((tenant, package.id));
    }
    // Then other kinds between runs: files into some, a finalize, more creations.
    for (tenant, id) in created.iter().take(3) {
        reg.ingest_file(tenant, *id, request("a.bin", false), body(b"abc", 2))
            .await
            .unwrap();
    }
    reg.finalize_package(&created[0].0, created[0].1, None)
        .await
        .unwrap();
    mixed_workload(&env).await;
    let client = env.db.client().await;
    let before = events::dump_views(&client).await.unwrap();
    let report = events::replay(reg.pool(), false).await.unwrap();
    assert!(report.events > 60, "{report:?}");
    assert_eq!(
        String::from_utf8_lossy(&events::dump_views(&client).await.unwrap()),
        String::from_utf8_lossy(&before)
    );
}

/// Every set-based path (runs of ingests, expiries and collections as live writes make them,
/// and the longer runs replay makes across transactions) leaves the views that applying the
/// same events one at a time leaves: the log is re-applied event by event in a transaction
/// and the views compared, byte for byte, with those the live writes made; then replay's
/// check compares its own rebuild with them.
#[tokio::test]
async fn set_based_views_equal_one_event_at_a_time() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    crate::support::define_instant_class(reg).await;
    mixed_workload(&env).await;
    // Packages that share bytes, expired in one run: a blob only they reference becomes
    // unreferenced; one another package also holds stays referenced.
    let tenant = TenantId::default_tenant();
    let shared = random_bytes(2000, 11);
    let kept = random_bytes(1500, 12);
    let keeper = reg
        .create_package(
            &tenant,
            NewPackage {
                producer: "keeper".into(),
                subject: "s".into(),
                retention_class: Some("standard".into()),
                metadata: Metadata::default(),
            },
        )
        .await
        .unwrap();
    reg.ingest_file(&tenant, keeper.id, request("k", false), body(&kept, 500))
        .await
        .unwrap();
    for i in 0..5 {
        let p = reg
            .create_package(
                &tenant,
                NewPackage {
                    producer: "gone".into(),
                    subject: format!("{i}"),
                    retention_class: Some("instant".into()),
                    metadata: Metadata::default(),
                },
            )
            .await
            .unwrap();
        for (path, data) in [("shared", &shared), ("kept", &kept)] {
            reg.ingest_file(&tenant, p.id, request(path, false), body(data, 700))
                .await
                .unwrap();
        }
        let own = random_bytes(900, 100 + i);
        reg.ingest_file(&tenant, p.id, request("own", false), body(&own, 300))
            .await
            .unwrap();
        reg.finalize_package(&tenant, p.id, None).await.unwrap();
    }
    // Two workers' passes, at different times: a replay applies the five expiries as one run,
    // and `shared` must become unreferenced at the second pass's time, as it did live.
    assert_eq!(reg.expire_due(3600, 2).await.unwrap().len(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(reg.expire_due(3600, 100).await.unwrap().len(), 3);
    // Before the bytes are collected (which removes their rows): replay's one run of five
    // expiries leaves `shared` unreferenced since the second pass, as live.
    let check = events::replay(reg.pool(), true).await.unwrap();
    assert_eq!(check.identical, Some(true));
    // The bytes only they held are collected in one run (`shared`, the five `own`, and what
    // the mixed workload's replaced files left).
    assert!(reg.collect_garbage(0, 100).await.unwrap().blobs >= 6);
    let client = env.db.client().await;
    let live = events::dump_views(&client).await.unwrap();

    reg.sequencer().numbered().await;
    let mut conn = reg.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let tables: Vec<&str> = events::views::VIEW_TABLES.iter().map(|(t, _)| *t).collect();
    tx.batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
        .await
        .unwrap();
    let mut since = 0;
    loop {
        let batch = events::read_after(&*tx, since, 1000, None, None)
            .await
            .unwrap();
        let Some(last) = batch.last() else { break };
        since = last.sequence;
        for event in &batch {
            events::views::apply(&tx, event).await.unwrap();
        }
    }
    let one_at_a_time = events::dump_views(&*tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&one_at_a_time),
        String::from_utf8_lossy(&live)
    );
    // And replay's own runs (as long as the log allows, across transactions) agree too.
    let check = events::replay(reg.pool(), true).await.unwrap();
    assert_eq!(check.identical, Some(true));
}

/// An expiry asks whether its files' blobs are still referenced. While another writer is adding
/// a file for the same blob (recorded, not committed), the expiry waits for it, so it answers
/// as a replay of the two (numbered in that order) does: the blob stays referenced, and the
/// rebuilt views equal the live ones. Without the wait the expiry would mark the blob
/// unreferenced although the other package's file names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_waits_for_a_concurrent_file_of_its_blob_and_replays_identically() {
    use artifactstore::domain::{Clock, FileId, SystemClock};
    use artifactstore::events::{DomainEvent, PackageExpired, Payload};
    let env = TestEnv::new().await;
    let registry = env.registry.clone();
    let tenant = TenantId::default_tenant();
    let old = crate::support::package(&registry).await;
    let file = registry
        .ingest_file(
            &tenant,
            old.id,
            request("a.bin", false),
            body(&random_bytes(1000, 7), 100),
        )
        .await
        .unwrap();
    let new = crate::support::package(&registry).await;

    // The same bytes, as a file of the new package: recorded, not committed yet.
    registry.sequencer().numbered().await;
    let client = registry.pool().get().await.unwrap();
    let logged = events::read_after(&**client, 0, 100, None, Some("v1.file.ingested"))
        .await
        .unwrap();
    drop(client);
    let Some(Payload::FileIngested(mut ingested)) =
        Payload::decode(&logged[0].event_type, &logged[0].payload).unwrap()
    else {
        panic!("not a file event");
    };
    ingested.file_id = FileId::generate();
    ingested.package_id = new.id;
    ingested.relative_path = RelativePath::new("b.bin").unwrap();
    let mut writer = registry.pool().get().await.unwrap();
    let adding = writer.transaction().await.unwrap();
    let added = events::record(&adding, vec![DomainEvent::of(&tenant, ingested)])
        .await
        .unwrap();

    let expiry = {
        let registry = registry.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let now = SystemClock.now();
            let mut client = registry.pool().get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            let expired = PackageExpired {
                package_id: old.id,
                retention_class: old.retention_class.clone(),
                reason: "test".into(),
                due_at: now,
                expired_at: now,
            };
            let recorded = events::record(&tx, vec![DomainEvent::of(&tenant, expired)])
                .await
                .unwrap();
            events::commit(tx, &recorded, registry.sequencer())
                .await
                .unwrap();
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !expiry.is_finished(),
        "the expiry waits for the uncommitted file of its blob"
    );
    events::commit(adding, &added, registry.sequencer())
        .await
        .unwrap();
    expiry.await.unwrap();

    let client = registry.pool().get().await.unwrap();
    let unreferenced: Option<time::OffsetDateTime> = client
        .query_one(
            "SELECT unreferenced_since FROM blobs WHERE blake3 = $1",
            &[&file.blake3.0.to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unreferenced, None,
        "the new package's file references the blob"
    );
    registry.sequencer().numbered().await;
    let order: Vec<String> = events::read_after(&**client, 0, 100, None, None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(
        &order[order.len() - 2..],
        ["v1.file.ingested", "v1.package.expired"],
        "numbered in the order they applied"
    );
    let check = events::replay(registry.pool(), true).await.unwrap();
    assert_eq!(check.identical, Some(true));
}

/// A replace (which stops naming its old bytes and names its new ones) and an expiry of a
/// package holding both, their blob rows in opposite digest orders unless every writer takes
/// them up front in one order. A third transaction holds the lower blob so that the expiry
/// waits for it first and the replace queues behind the expiry: taking the higher blob first,
/// the replace would then deadlock with the expiry. Both succeed, and the views replay
/// identically.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replace_and_an_expiry_of_the_same_blobs_never_deadlock() {
    let env = TestEnv::new().await;
    let reg = env.registry.clone();
    crate::support::define_instant_class(&reg).await;
    let tenant = TenantId::default_tenant();
    let (a, b) = (random_bytes(3000, 1000), random_bytes(3000, 2000));
    let (low, high) = if blake3::hash(&a).as_bytes() < blake3::hash(&b).as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let expiring = reg
        .create_package(
            &tenant,
            NewPackage {
                producer: "expiring".into(),
                subject: "s".into(),
                retention_class: Some("instant".into()),
                metadata: Metadata::default(),
            },
        )
        .await
        .unwrap();
    for (path, data) in [("low", &low), ("high", &high)] {
        reg.ingest_file(&tenant, expiring.id, request(path, false), body(data, 1000))
            .await
            .unwrap();
    }
    reg.finalize_package(&tenant, expiring.id, None)
        .await
        .unwrap();
    let open = crate::support::package(&reg).await;
    reg.ingest_file(&tenant, open.id, request("f", false), body(&high, 1000))
        .await
        .unwrap();

    let holder = env.db.client().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM blobs WHERE blake3 = '\\x{}'::bytea FOR UPDATE",
            blake3::hash(&low).to_hex()
        ))
        .await
        .unwrap();
    let pause = std::time::Duration::from_millis(300);
    let expire = {
        let reg = reg.clone();
        tokio::spawn(async move { reg.expire_due(3600, 10).await })
    };
    tokio::time::sleep(pause).await;
    let replace = {
        let reg = reg.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            reg.ingest_file(&tenant, open.id, request("f", true), body(&low, 1000))
                .await
        })
    };
    tokio::time::sleep(pause).await;
    assert!(!expire.is_finished() && !replace.is_finished());
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(expire.await.unwrap().unwrap().len(), 1);
    replace.await.unwrap().unwrap();
    let check = events::replay(reg.pool(), true).await.unwrap();
    assert_eq!(check.identical, Some(true));
}

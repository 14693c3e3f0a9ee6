//! Garbage collection: unreferenced blobs go after the grace (with an event), shared ones stay,
//! orphan bytes go, and the race with deduplicating ingests cannot lose referenced bytes.

use crate::support::{TestEnv, body, random_bytes};
use artifactstore::domain::{PackageId, TenantId};
use artifactstore::identity::DualHasher;
use artifactstore::registry::{NewPackage, Registry};
use artifactstore::storage::BlobStore;

use crate::support::ingest_request as request;

async fn define_instant(reg: &Registry) {
    crate::support::define_instant_class(reg).await;
}

async fn package_with(
    reg: &Registry,
    tenant: &TenantId,
    class: &str,
    files: &[&[u8]],
) -> PackageId {
    let p = reg
        .create_package(
            tenant,
            NewPackage {
                producer: "gc".into(),
                subject: "s".into(),
                retention_class: Some(class.into()),
                metadata: Default::default(),
            },
        )
        .await
        .unwrap();
    for (i, data) in files.iter().enumerate() {
        reg.ingest_file(tenant, p.id, request(&format!("f{i}")), body(data, 4096))
            .await
            .unwrap();
    }
    reg.finalize_package(tenant, p.id, None).await.unwrap();
    p.id
}

#[tokio::test]
async fn unreferenced_blobs_are_collected_after_the_grace_and_shared_ones_stay() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    define_instant(reg).await;
    let tenant = TenantId::default_tenant();
    let (only, shared) = (random_bytes(70_000, 1), random_bytes(50_000, 2));
    package_with(reg, &tenant, "instant", &[&only, &shared]).await;
    package_with(reg, &tenant, "standard", &[&shared]).await;
    let usage = reg.usage(&tenant).await.unwrap();
    let (o, s) = (only.len() as u64, shared.len() as u64);
    assert_eq!(
        (
            usage.packages,
            usage.files,
            usage.logical_bytes,
            usage.physical_bytes,
            usage.shared_bytes
        ),
        (2, 3, o + 2 * s, o + s, s)
    );
    assert_eq!(usage.expiry_backlog, 1, "the instant package is due");
    assert_eq!(
        reg.usage(&TenantId::new("other").unwrap())
            .await
            .unwrap()
            .files,
        0
    );
    assert_eq!(reg.expire_due(3600, 100).await.unwrap().len(), 1);
    let usage = reg.usage(&tenant).await.unwrap();
    assert_eq!((usage.packages, usage.expiry_backlog), (1, 0));
    assert_eq!((usage.unreferenced_blobs, usage.unreferenced_bytes), (1, o));

    // Within the grace: nothing goes.
    assert_eq!(reg.collect_garbage(3600, 100).await.unwrap().blobs, 0);
    assert_eq!(reg.collectable_blobs(3600, 100).await.unwrap(), vec![]);
    let waiting = reg.collectable_blobs(0, 100).await.unwrap();
    assert_eq!(waiting.len(), 1);
    let only_address = DualHasher::digest(&only).primary_address();
    assert_eq!(waiting[0].address, only_address);

    let done = reg.collect_garbage(0, 100).await.unwrap();
    assert_eq!((done.blobs, done.bytes), (1, only.len() as u64));
    assert_eq!(env.store.head(&only_address).await.unwrap(), None);
    let shared_address = DualHasher::digest(&shared).primary_address();
    assert_eq!(
        env.store.head(&shared_address).await.unwrap(),
        Some(shared.len() as u64)
    );
    let client = env.db.client().await;
    let row = client
        .query_one(
            "SELECT tenant, count(*) FROM events WHERE type = 'v1.blob.collected' GROUP BY tenant",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, &str>(0), row.get::<_, i64>(1)), ("system", 1));
    let blobs: i64 = client
        .query_one("SELECT count(*) FROM blobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(blobs, 1);
    // Collecting again finds nothing; replay reproduces the views exactly.
    assert_eq!(reg.collect_garbage(0, 100).await.unwrap().blobs, 0);
    let before = artifactstore::events::dump_views(&client).await.unwrap();
    artifactstore::events::replay(reg.pool(), false)
        .await
        .unwrap();
    assert_eq!(
        artifactstore::events::dump_views(&client).await.unwrap(),
        before
    );

    // The same bytes uploaded again after collection are stored afresh.
    package_with(reg, &tenant, "standard", &[&only]).await;
    assert_eq!(
        env.store.head(&only_address).await.unwrap(),
        Some(only.len() as u64)
    );
}

#[tokio::test]
async fn orphan_bytes_without_a_row_are_collected() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    let kept = random_bytes(10_000, 3);
    package_with(reg, &tenant, "standard", &[&kept]).await;
    // Bytes written by a process that crashed before its transaction.
    let orphan = random_bytes(10_000, 4);
    let mut staged = env.store.stage().await.unwrap();
    staged.write(orphan.clone().into()).await.unwrap();
    let orphan_address = DualHasher::digest(&orphan).primary_address();
    staged.commit(&orphan_address).await.unwrap();

    assert_eq!(reg.collect_orphans().await.unwrap(), 1);
    assert_eq!(env.store.head(&orphan_address).await.unwrap(), None);
    assert!(
        env.store
            .head(&DualHasher::digest(&kept).primary_address())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(reg.collect_orphans().await.unwrap(), 0);
}

/// Ingests of the same bytes race with collection at zero grace: packages holding the bytes
/// keep expiring (making them unreferenced) while others deduplicate against them. Afterwards
/// every file's bytes exist and verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_never_loses_bytes_a_concurrent_ingest_deduplicated_against() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    define_instant(reg).await;
    let data = random_bytes(256 * 1024, 5);
    let address = DualHasher::digest(&data).primary_address();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Blobs collected so far: the ingests go on (40 rounds at least, 400 at most) until the
    // collector has won at least one race, however busy the machine is.
    let collected = std::sync::atomic::AtomicU64::new(0);
    let ingesters = futures::future::join_all((0..3).map(|w| {
        let (data, reg, collected) = (&data, reg, &collected);
        async move {
            let tenant = TenantId::new(&format!("t{w}")).unwrap();
            for round in 0..400 {
                if round >= 40 && collected.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                    break;
                }
                // While a file references the bytes they must be there; then the package
                // expires at once and the bytes are unreferenced again (unless another
                // worker's package holds them).
                let p = reg
                    .create_package(
                        &tenant,
                        NewPackage {
                            producer: "gc".into(),
                            subject: "s".into(),
                            retention_class: Some("instant".into()),
                            metadata: Default::default(),
                        },
                    )
                    .await
                    .unwrap();
                reg.ingest_file(&tenant, p.id, request("f"), body(data, 65536))
                    .await
                    .unwrap();
                assert_whole(reg, &tenant, p.id, data).await;
                reg.finalize_package(&tenant, p.id, None).await.unwrap();
                // (A long grace for open packages: only finalized ones expire here.)
                reg.expire_due(3600, 50).await.unwrap();
            }
            let id = package_with(reg, &tenant, "standard", &[data]).await;
            (tenant, id)
        }
    }));
    let collector = async {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let blobs = reg.collect_garbage(0, 100).await.unwrap().blobs;
            collected.fetch_add(blobs, std::sync::atomic::Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
        collected.load(std::sync::atomic::Ordering::Relaxed)
    };
    let (packages, collected) = tokio::join!(
        async {
            let p = ingesters.await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            p
        },
        collector
    );
    assert!(collected > 0, "the collector never ran against the ingests");
    for (tenant, id) in &packages {
        assert_whole(reg, tenant, *id, &data).await;
    }
    assert_eq!(
        env.store.head(&address).await.unwrap(),
        Some(data.len() as u64)
    );
    let client = env.db.client().await;
    let events: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'v1.blob.collected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events as u64, collected);
}

async fn assert_whole(reg: &Registry, tenant: &TenantId, id: PackageId, data: &[u8]) {
    for file in reg.list_files(tenant, id).await.unwrap() {
        let download = reg.read_file(tenant, file.id, None).await.unwrap();
        let bytes = crate::support::collect(download.body).await;
        assert!(bytes == data, "package {id} lost its bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_expires_and_collects_and_dry_run_changes_nothing() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    define_instant(reg).await;
    let tenant = TenantId::default_tenant();
    let data = random_bytes(20_000, 9);
    package_with(reg, &tenant, "instant", &[&data]).await;
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_artifactstore"))
            .args(["worker", "--once", "--gc-grace-seconds", "0"])
            .args(extra)
            .env("ARTIFACTSTORE_DATABASE_URL", &env.db.url)
            .env(
                "ARTIFACTSTORE_STORAGE_LOCAL_ROOT",
                env.dir.path().join("blobs"),
            )
            .env("ARTIFACTSTORE_DATA_DIR", env.dir.path().join("data"))
            .env("ARTIFACTSTORE_LOG", "error")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(&["--dry-run"]);
    assert!(
        out.contains("would expire package") && out.contains("retention ran out"),
        "{out}"
    );
    assert!(out.contains("1 packages would expire, 0 blobs"), "{out}");
    let address = DualHasher::digest(&data).primary_address();
    assert!(env.store.head(&address).await.unwrap().is_some());
    // One pass expires the package, then collects its now unreferenced blob (zero grace).
    let out = run(&[]);
    assert!(
        out.contains("expired 1 packages; collected 1 blobs (20000 bytes)"),
        "{out}"
    );
    assert_eq!(env.store.head(&address).await.unwrap(), None);
    let out = run(&["--dry-run"]);
    assert!(out.contains("0 packages would expire, 0 blobs"), "{out}");
}

/// A blob collected between a migration's listing and its move is reported as collected, and
/// nothing of it reaches the target (the move takes the blob's collection lock first).
#[tokio::test]
async fn a_blob_collected_before_its_move_is_not_migrated() {
    use artifactstore::registry::{MigrateScope, Moved};
    use artifactstore::storage::local::LocalStore;
    use std::sync::Arc;
    let db = crate::support::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(LocalStore::open("a", dir.path().join("a")).unwrap());
    let b = Arc::new(LocalStore::open("b", dir.path().join("b")).unwrap());
    let backends =
        artifactstore::storage::Backends::new(vec![a.clone(), b.clone()], "a", Vec::new()).unwrap();
    let reg = Registry::new(artifactstore::db::pool(&db.url, 8).unwrap(), backends);
    define_instant(&reg).await;
    let tenant = TenantId::default_tenant();
    let doomed = random_bytes(10_000, 41);
    let kept = random_bytes(10_000, 42);
    package_with(&reg, &tenant, "instant", &[&doomed]).await;
    package_with(&reg, &tenant, "standard", &[&kept]).await;
    let scope = MigrateScope {
        from: "a".into(),
        to: "b".into(),
        package: None,
        retention_class: None,
    };
    let page = reg.migration_page(&scope, None, 10).await.unwrap();
    assert_eq!(page.len(), 2);
    // The instant package expires and its blob is collected, after the listing.
    assert_eq!(reg.expire_due(3600, 100).await.unwrap().len(), 1);
    assert_eq!(reg.collect_garbage(0, 100).await.unwrap().blobs, 1);
    let doomed_digest = DualHasher::digest(&doomed).blake3;
    let mut moved = Vec::new();
    for item in &page {
        let outcome = reg.migrate_blob(&scope, item).await.unwrap();
        moved.push((item.blake3 == doomed_digest, outcome));
    }
    moved.sort_by_key(|(d, _)| *d);
    assert_eq!(
        moved,
        vec![(false, Moved::Copied), (true, Moved::Collected)]
    );
    let doomed_address = artifactstore::identity::ContentAddress::blake3(doomed_digest);
    assert_eq!(b.head(&doomed_address).await.unwrap(), None);
    assert_eq!(a.head(&doomed_address).await.unwrap(), None);
}

/// A byte deletion that fails fails the round: the events and views written meanwhile are
/// rolled back (every blob row stays, nothing is recorded), and the next round collects every
/// blob, those whose bytes already went included.
#[tokio::test]
async fn a_failed_byte_deletion_records_nothing_and_the_next_round_collects_all() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    define_instant(reg).await;
    let tenant = TenantId::default_tenant();
    let data: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(1000, 900 + i)).collect();
    let files: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    package_with(reg, &tenant, "instant", &files).await;
    assert_eq!(reg.expire_due(3600, 100).await.unwrap().len(), 1);
    // The last blob's file is replaced by a directory: removing it fails, even as root.
    let stuck = env
        .store
        .path_of(&DualHasher::digest(&data[7]).primary_address());
    std::fs::remove_file(&stuck).unwrap();
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("inside"), b"x").unwrap();

    assert!(reg.collect_garbage(0, 100).await.is_err());
    let client = env.db.client().await;
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM blobs").await, 8);
    assert_eq!(
        count("SELECT count(*) FROM events WHERE type = 'v1.blob.collected'").await,
        0
    );

    std::fs::remove_dir_all(&stuck).unwrap();
    assert_eq!(reg.collect_garbage(0, 100).await.unwrap().blobs, 8);
    assert_eq!(count("SELECT count(*) FROM blobs").await, 0);
    for bytes in &data {
        let address = DualHasher::digest(bytes).primary_address();
        assert_eq!(env.store.head(&address).await.unwrap(), None);
    }
}

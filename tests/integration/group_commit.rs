//! Group commit of small ingests (`registry/group.rs`): files recorded together in one
//! transaction are still checked one by one, exactly as lone ingests would be.

use crate::support::{TestEnv, body, random_bytes};
use artifactstore::domain::{Metadata, PackageId, RelativePath, TenantId};
use artifactstore::events;
use artifactstore::registry::{IngestRequest, Limits, NewPackage};
use artifactstore::{Error, Registry};
use std::collections::BTreeMap;

fn new_package(subject: &str) -> NewPackage {
    NewPackage {
        producer: "group".into(),
        subject: subject.into(),
        retention_class: None,
        metadata: Metadata::new(BTreeMap::new()).unwrap(),
    }
}

fn request(path: &str, replace: bool) -> IngestRequest {
    IngestRequest {
        relative_path: RelativePath::new(path).unwrap(),
        media_type: None,
        expected_digest: None,
        replace,
        if_match: None,
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Ok,
    Conflict,
    NotFound,
    Quota,
}

async fn ingest(
    registry: &Registry,
    tenant: &TenantId,
    package: PackageId,
    path: &str,
    replace: bool,
    seed: u64,
) -> Outcome {
    let data = random_bytes(100 + (seed as usize % 5000), seed);
    match registry
        .ingest_file(tenant, package, request(path, replace), body(&data, 1024))
        .await
    {
        Ok(file) => {
            assert_eq!(file.size, data.len() as u64);
            Outcome::Ok
        }
        Err(Error::Conflict(_)) => Outcome::Conflict,
        Err(Error::NotFound { .. }) => Outcome::NotFound,
        Err(Error::LimitExceeded(_)) => Outcome::Quota,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn count(outcomes: &[Outcome], which: Outcome) -> usize {
    outcomes.iter().filter(|o| **o == which).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_small_ingests_are_checked_one_by_one_and_replay_identically() {
    let env = TestEnv::new().await;
    let limits = Limits {
        max_files_per_package: 20,
        ..Limits::default()
    };
    // A clone with a lower file limit, sharing the committers: each file carries its limit.
    let registry = env.registry.clone();
    let small = env.registry.clone().with_limits(limits);
    let tenant = TenantId::new("default").unwrap();
    let other = TenantId::new("other").unwrap();
    let open = registry
        .create_package(&tenant, new_package("open"))
        .await
        .unwrap()
        .id;
    let limited = registry
        .create_package(&tenant, new_package("limited"))
        .await
        .unwrap()
        .id;
    let finalized = registry
        .create_package(&tenant, new_package("final"))
        .await
        .unwrap()
        .id;
    registry
        .finalize_package(&tenant, finalized, None)
        .await
        .unwrap();
    let foreign = registry
        .create_package(&other, new_package("foreign"))
        .await
        .unwrap()
        .id;

    // All at once, interleaved, so batches mix every case.
    let mut work: Vec<(PackageId, TenantId, String, bool, &str)> = Vec::new();
    for i in 0..200 {
        let (package, who, path, replace, case) = match i % 8 {
            0 | 1 => (open, &tenant, format!("distinct/{i}"), false, "distinct"),
            2 => (open, &tenant, "same".to_owned(), false, "same"),
            3 => (open, &tenant, "replaced".to_owned(), true, "replaced"),
            4 => (finalized, &tenant, format!("late/{i}"), false, "finalized"),
            5 => (foreign, &tenant, format!("foreign/{i}"), false, "foreign"),
            _ => (limited, &tenant, format!("limited/{i}"), false, "limited"),
        };
        work.push((package, who.clone(), path, replace, case));
    }
    let runs = work
        .iter()
        .enumerate()
        .map(|(i, (package, who, path, replace, case))| {
            let registry = if *case == "limited" {
                small.clone()
            } else {
                registry.clone()
            };
            let (package, who, path, replace) = (*package, who.clone(), path.clone(), *replace);
            tokio::spawn(
                async move { ingest(&registry, &who, package, &path, replace, i as u64).await },
            )
        });
    let outcomes: Vec<Outcome> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let of = |case: &str| -> Vec<Outcome> {
        work.iter()
            .zip(&outcomes)
            .filter(|((.., c), _)| *c == case)
            .map(|(_, o)| *o)
            .collect()
    };
    assert!(of("distinct").iter().all(|o| *o == Outcome::Ok));
    let same = of("same");
    assert_eq!(count(&same, Outcome::Ok), 1, "{same:?}");
    assert_eq!(count(&same, Outcome::Conflict), same.len() - 1);
    assert!(of("replaced").iter().all(|o| *o == Outcome::Ok));
    assert!(of("finalized").iter().all(|o| *o == Outcome::Conflict));
    assert!(of("foreign").iter().all(|o| *o == Outcome::NotFound));
    let limited_outcomes = of("limited");
    assert_eq!(count(&limited_outcomes, Outcome::Ok), 20);
    assert_eq!(
        count(&limited_outcomes, Outcome::Quota),
        limited_outcomes.len() - 20
    );

    // Files were recorded together: fewer transactions than files.
    let (batches, files) = registry.group_commit_stats();
    assert_eq!(
        small.group_commit_stats(),
        (batches, files),
        "one set of committers"
    );
    let accepted = count(&outcomes, Outcome::Ok) as u64;
    assert_eq!(
        files, accepted,
        "every accepted file went through group commit"
    );
    assert!(batches < files, "{batches} batches for {files} files");

    // The views say what the outcomes say.
    let package = registry.get_package(&tenant, open).await.unwrap();
    let distinct = of("distinct").len() as u64;
    assert_eq!(package.file_count, distinct + 2);
    let listed = registry.list_files(&tenant, open).await.unwrap();
    assert_eq!(listed.len() as u64, package.file_count);
    assert_eq!(
        listed.iter().map(|f| f.size).sum::<u64>(),
        package.total_size
    );
    assert_eq!(
        registry
            .get_package(&tenant, limited)
            .await
            .unwrap()
            .file_count,
        20
    );
    assert_eq!(
        registry
            .get_package(&tenant, finalized)
            .await
            .unwrap()
            .file_count,
        0
    );
    assert_eq!(
        registry
            .get_package(&other, foreign)
            .await
            .unwrap()
            .file_count,
        0
    );

    // One event per accepted file; the seven replaces name the file before them, in order.
    env.registry.sequencer().numbered().await;
    let client = env.db.client().await;
    let ingested = events::read_after(&client, 0, 10_000, None, Some("v1.file.ingested"))
        .await
        .unwrap();
    assert_eq!(ingested.len() as u64, accepted);
    let replaced: Vec<events::FileIngested> = ingested
        .iter()
        .map(|e| artifactstore::manifest::from_canonical_cbor(&e.payload).unwrap())
        .filter(|f: &events::FileIngested| f.relative_path.as_str() == "replaced")
        .collect();
    assert_eq!(replaced.len(), of("replaced").len());
    assert_eq!(replaced[0].replaced_file_id, None);
    for pair in replaced.windows(2) {
        assert_eq!(pair[1].replaced_file_id, Some(pair[0].file_id));
    }
    let last = listed
        .iter()
        .find(|f| f.relative_path.as_str() == "replaced")
        .unwrap();
    assert_eq!(last.id, replaced.last().unwrap().file_id);

    // Replay rebuilds the same views from the log.
    let before = events::dump_views(&client).await.unwrap();
    events::replay(registry.pool(), false).await.unwrap();
    assert_eq!(events::dump_views(&client).await.unwrap(), before);
}

/// Tenants `default` and `other`, a package of each; the first one's id.
async fn packages_of_two_tenants(env: &TestEnv) -> (TenantId, TenantId, PackageId) {
    let tenant = TenantId::new("default").unwrap();
    let other = TenantId::new("other").unwrap();
    let package = env
        .registry
        .create_package(&tenant, new_package("p"))
        .await
        .unwrap()
        .id;
    env.registry
        .create_package(&other, new_package("q"))
        .await
        .unwrap();
    (tenant, other, package)
}

/// The schema itself refuses a file row whose tenant is not its package's (V5).
#[tokio::test]
async fn a_file_row_must_have_its_packages_tenant() {
    let env = TestEnv::new().await;
    let (tenant, other, package) = packages_of_two_tenants(&env).await;
    let file = env
        .registry
        .ingest_file(&tenant, package, request("a.txt", false), body(b"abc", 3))
        .await
        .unwrap();
    let client = env.db.client().await;
    let insert = "INSERT INTO files (id, tenant, package_id, relative_path, size, media_type, \
                  blake3, created_at, created_position) \
                  SELECT gen_random_uuid(), $1, package_id, 'b.txt', size, media_type, blake3, \
                         created_at, created_position FROM files WHERE id = $2";
    let refused = client
        .execute(insert, &[&other.as_str(), &file.id.0])
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("files_package_tenant_fkey")
            || format!("{refused:?}").contains("files_package_tenant_fkey"),
        "{refused:?}"
    );
    // The same row with the package's own tenant is accepted (the check is the tenant).
    let inserted = client
        .execute(insert, &[&tenant.as_str(), &file.id.0])
        .await
        .unwrap();
    assert_eq!(inserted, 1);
}

/// A package's retention state and manifest have its tenant too (one composite key each,
/// sql/V19): a row naming the package with another tenant is refused, even a tenant that
/// exists.
#[tokio::test]
async fn retention_state_and_manifest_rows_must_have_their_packages_tenant() {
    let env = TestEnv::new().await;
    let (tenant, other, package) = packages_of_two_tenants(&env).await;
    let client = env.db.client().await;
    client
        .execute(
            "DELETE FROM retention_state WHERE package_id = $1",
            &[&package.0],
        )
        .await
        .unwrap();
    let rows = [
        (
            "INSERT INTO retention_state (package_id, tenant, legal_hold) VALUES ($1, $2, false)",
            "retention_state_package_tenant_fkey",
        ),
        (
            "INSERT INTO manifests (package_id, tenant, digest, cbor) VALUES ($1, $2, 'd', '')",
            "manifests_package_tenant_fkey",
        ),
    ];
    for (insert, key) in rows {
        let refused = client
            .execute(insert, &[&package.0, &other.as_str()])
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
        );
        assert!(format!("{refused:?}").contains(key), "{refused:?}");
        let inserted = client
            .execute(insert, &[&package.0, &tenant.as_str()])
            .await
            .unwrap();
        assert_eq!(inserted, 1, "{insert}");
    }
}

/// A batch whose transaction fails loses nothing: each of its files is retried alone, so only
/// the file that really fails is refused, and the views and the log still agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_is_retried_file_by_file() {
    let env = TestEnv::new().await;
    let registry = env.registry.clone();
    let tenant = TenantId::new("default").unwrap();
    let package = registry
        .create_package(&tenant, new_package("faults"))
        .await
        .unwrap()
        .id;
    // Fault injection in the database itself: inserting a file row named `poison/...` fails,
    // which fails the whole batch that carries it.
    let client = env.db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.relative_path LIKE 'poison/%' THEN RAISE EXCEPTION 'injected failure'; \
               END IF; RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON files \
               FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .unwrap();
    let runs = (0..80u64).map(|i| {
        let registry = registry.clone();
        let tenant = tenant.clone();
        let path = if i % 4 == 0 {
            format!("poison/{i}")
        } else {
            format!("ok/{i}")
        };
        tokio::spawn(async move {
            let data = random_bytes(200 + i as usize, 1000 + i);
            let result = registry
                .ingest_file(&tenant, package, request(&path, false), body(&data, 64))
                .await;
            (path, result.map(|f| f.size))
        })
    });
    let results: Vec<_> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for (path, result) in &results {
        if path.starts_with("poison/") {
            assert!(
                matches!(result, Err(Error::Database(_))),
                "{path}: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "{path}: {result:?}");
        }
    }
    let good = results.iter().filter(|(p, _)| p.starts_with("ok/")).count() as u64;
    // Some good files shared a failed batch with a poisoned one and got in only alone (the
    // counter counts files of batches that committed).
    let (_, files) = registry.group_commit_stats();
    assert!(
        files < good,
        "{files} files committed in batches, {good} accepted: the fallback never ran"
    );

    // Exactly the good files are recorded, once each, and replay agrees.
    let listed = registry.list_files(&tenant, package).await.unwrap();
    assert_eq!(listed.len() as u64, good);
    assert!(
        listed
            .iter()
            .all(|f| f.relative_path.as_str().starts_with("ok/"))
    );
    assert_eq!(
        registry
            .get_package(&tenant, package)
            .await
            .unwrap()
            .file_count,
        good
    );
    env.registry.sequencer().numbered().await;
    let ingested = events::read_after(&client, 0, 10_000, None, Some("v1.file.ingested"))
        .await
        .unwrap();
    assert_eq!(ingested.len() as u64, good);
    let before = events::dump_views(&client).await.unwrap();
    events::replay(registry.pool(), false).await.unwrap();
    assert_eq!(events::dump_views(&client).await.unwrap(), before);
}

/// A batch records its tenants one after the other (byte order), each tenant's files in the
/// order they came: its statements then change the tenants' usage rows in the order every
/// other writer does, so two batches whose connections share a usage slot cannot deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_records_its_tenants_in_order() {
    let env = TestEnv::new().await;
    let registry = env.registry.clone();
    // Ids whose byte order the database's collation may not keep.
    let tenants: Vec<TenantId> = ["b-2", "a_1", "b.1", "a-2", "c"]
        .iter()
        .map(|t| TenantId::new(t).unwrap())
        .collect();
    let mut packages = Vec::new();
    for tenant in &tenants {
        let package = registry
            .create_package(tenant, new_package("order"))
            .await
            .unwrap()
            .id;
        packages.push((tenant.clone(), package));
    }
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let (tenant, package) = packages[i as usize % packages.len()].clone();
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = ingest(&registry, &tenant, package, &format!("f/{i}"), false, i).await;
            assert_eq!(outcome, Outcome::Ok);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let client = env.db.client().await;
    let rows = client
        .query(
            "SELECT ticket, array_agg(tenant ORDER BY position) FROM events \
             WHERE type = 'v1.file.ingested' GROUP BY ticket",
            &[],
        )
        .await
        .unwrap();
    let mut mixed = 0;
    for row in &rows {
        let order: Vec<String> = row.get(1);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "a batch's tenants out of byte order");
        sorted.dedup();
        if sorted.len() > 1 {
            mixed += 1;
        }
    }
    assert!(
        mixed > 0,
        "no batch held two tenants' files ({} batches): the test showed nothing",
        rows.len()
    );
}

/// A small file checked before its body and refused after it: the package is finalized while
/// the body is still arriving. It is refused, and nothing of it is recorded: no file, no
/// event, the package as it was finalized.
#[tokio::test]
async fn a_small_file_whose_package_is_finalized_while_its_body_arrives_is_refused() {
    use futures::StreamExt as _;
    let env = TestEnv::new().await;
    let tenant = TenantId::default_tenant();
    let package = env
        .registry
        .create_package(&tenant, new_package("finalized mid-body"))
        .await
        .unwrap()
        .id;
    let data = random_bytes(4096, 7);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (started, body_started) = tokio::sync::oneshot::channel::<()>();
    let first = bytes::Bytes::copy_from_slice(&data[..1024]);
    let rest = bytes::Bytes::copy_from_slice(&data[1024..]);
    // The body is read only once the ingest was admitted: its first chunk says so.
    let slow_body = futures::stream::once(async move {
        let _ = started.send(());
        Ok::<_, std::io::Error>(first)
    })
    .chain(futures::stream::once(async move {
        let _ = released.await;
        Ok(rest)
    }));
    let registry = env.registry.clone();
    let tenant_for_ingest = tenant.clone();
    let ingest = tokio::spawn(async move {
        registry
            .ingest_file(
                &tenant_for_ingest,
                package,
                request("late.bin", false),
                slow_body,
            )
            .await
    });
    // The ingest was admitted and is waiting for the rest of its body.
    body_started.await.unwrap();
    assert!(!ingest.is_finished());
    let finalized = env
        .registry
        .finalize_package(&tenant, package, None)
        .await
        .unwrap();
    assert_eq!(finalized.file_count, 0);
    env.registry.sequencer().numbered().await;
    let events_before = events::latest_sequence(&env.db.client().await)
        .await
        .unwrap();
    release.send(()).unwrap();
    match ingest.await.unwrap() {
        Err(Error::Conflict(message)) => assert!(message.contains("finalized"), "{message}"),
        other => panic!("a file added to a finalized package: {other:?}"),
    }
    env.registry.sequencer().numbered().await;
    let after = env.registry.get_package(&tenant, package).await.unwrap();
    assert_eq!((after.file_count, after.total_size), (0, 0));
    assert!(
        env.registry
            .list_files(&tenant, package)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        events::latest_sequence(&env.db.client().await)
            .await
            .unwrap(),
        events_before,
        "nothing recorded"
    );
}

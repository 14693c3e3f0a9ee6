//! The library's whole flow, with no HTTP server: ingest a directory, finalize, read back.

use crate::support::{TestEnv, body, collect, random_bytes};
use artifactstore::domain::{FileId, Metadata, PackageId, TenantId};
use artifactstore::events;
use artifactstore::identity::DualHasher;
use artifactstore::manifest::Manifest;
use artifactstore::registry::{NewPackage, PackageFilter, PackageStatus};
use artifactstore::storage::{BlobStore, ByteRange};
use artifactstore::{Error, Registry};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::Path;

fn new_package(producer: &str) -> NewPackage {
    NewPackage {
        producer: producer.into(),
        subject: "release 1.0".into(),
        retention_class: None,
        metadata: Metadata::new(BTreeMap::from([("git.sha".into(), "abc123".into())])).unwrap(),
    }
}

use crate::support::ingest_request as request;

/// Writes a fixture tree: empty, tiny, multi-chunk and duplicate files in nested directories.
fn write_fixtures(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("README.txt".to_string(), b"hello, artifacts\n".to_vec()),
        ("empty.bin".to_string(), Vec::new()),
        ("bin/tool".to_string(), random_bytes(2 * 1024 * 1024 + 5, 7)),
        (
            "bin/tool.copy".to_string(),
            random_bytes(2 * 1024 * 1024 + 5, 7),
        ),
        (
            "logs/2026/11/build.log".to_string(),
            random_bytes(70_001, 8),
        ),
        (
            "reports/ü-unicode name.json".to_string(),
            br#"{"ok":true}"#.to_vec(),
        ),
    ];
    for (path, data) in &files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
    files
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
}

async fn ingest_tree(registry: &Registry, tenant: &TenantId, id: PackageId, root: &Path) {
    let mut paths = Vec::new();
    walk(root, root, &mut paths);
    for path in paths {
        let file = tokio::fs::File::open(root.join(&path)).await.unwrap();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
        registry
            .ingest_file(tenant, id, request(&path), stream)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn ingest_directory_finalize_read_back_tail_and_replay() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    let fixtures_dir = env.dir.path().join("fixtures");
    let fixtures = write_fixtures(&fixtures_dir);

    let package = reg
        .create_package(&tenant, new_package("ci/pipeline-7"))
        .await
        .unwrap();
    assert_eq!(package.status, PackageStatus::Open);
    assert_eq!(package.retention_class, "standard");
    ingest_tree(reg, &tenant, package.id, &fixtures_dir).await;
    let finalized = reg
        .finalize_package(&tenant, package.id, Some("ci-bot".into()))
        .await
        .unwrap();
    assert_eq!(finalized.status, PackageStatus::Finalized);
    assert_eq!(finalized.file_count, fixtures.len() as u64);
    assert_eq!(
        finalized.total_size,
        fixtures.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
    );

    // The manifest: canonical bytes, its digest stamped on the package, files sorted.
    let stored = reg.get_manifest(&tenant, package.id).await.unwrap();
    assert_eq!(Some(stored.digest), finalized.manifest_digest);
    assert_eq!(Manifest::digest_of(&stored.cbor), stored.digest);
    let manifest = Manifest::from_cbor(&stored.cbor).unwrap();
    assert_eq!(manifest.to_cbor().unwrap(), stored.cbor);
    let mut expected_paths: Vec<_> = fixtures.iter().map(|(p, _)| p.clone()).collect();
    expected_paths.sort();
    let manifest_paths: Vec<_> = manifest
        .files
        .iter()
        .map(|f| f.relative_path.to_string())
        .collect();
    assert_eq!(manifest_paths, expected_paths);
    assert_eq!(manifest.package.metadata.entries()["git.sha"], "abc123");
    assert_eq!(manifest.provenance.finalized_by.as_deref(), Some("ci-bot"));
    assert!(manifest.retention_summary.expires_at.is_some());
    // Duplicate bytes are stored once: one receipt per distinct blob.
    let distinct: std::collections::HashSet<_> = fixtures.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(manifest.storage_receipts.len(), distinct.len());
    let json: serde_json::Value =
        serde_json::from_slice(&Manifest::jcs(&stored.cbor).unwrap()).unwrap();
    assert_eq!(json["manifest_version"], 1);

    // Every file reads back with both digests right, independently recomputed.
    let files = reg.list_files(&tenant, package.id).await.unwrap();
    for (path, data) in &fixtures {
        let file = files
            .iter()
            .find(|f| f.relative_path.as_str() == path)
            .unwrap();
        let entry = manifest
            .files
            .iter()
            .find(|f| f.relative_path.as_str() == path)
            .unwrap();
        let download = reg.read_file(&tenant, file.id, None).await.unwrap();
        let bytes = collect(download.body).await;
        assert_eq!(&bytes, data, "{path}");
        assert_eq!(
            entry.digests.blake3,
            blake3::hash(&bytes).to_hex().to_string()
        );
        assert_eq!(
            entry.digests.sha256,
            hex::encode(sha2::Sha256::digest(&bytes))
        );
        assert_eq!(entry.size, bytes.len() as u64);
        assert_eq!(entry.media_type, "application/octet-stream");
    }

    // Ranged reads.
    let tool = files
        .iter()
        .find(|f| f.relative_path.as_str() == "bin/tool")
        .unwrap();
    let data = &fixtures.iter().find(|(p, _)| p == "bin/tool").unwrap().1;
    let range = ByteRange {
        offset: 1_000_000,
        length: 123_457,
    };
    let part = collect(
        reg.read_file(&tenant, tool.id, Some(range))
            .await
            .unwrap()
            .body,
    )
    .await;
    assert_eq!(part, &data[1_000_000..1_123_457]);
    let bad = ByteRange {
        offset: data.len() as u64,
        length: 1,
    };
    assert!(matches!(
        reg.read_file(&tenant, tool.id, Some(bad)).await,
        Err(Error::InvalidInput(_))
    ));

    // The event log tells the same story, in order.
    env.registry.sequencer().numbered().await;
    let client = env.db.client().await;
    let log = events::read_after(&client, 0, 1000, Some(&tenant), None)
        .await
        .unwrap();
    let types: Vec<_> = log.iter().map(|e| e.event_type.as_str()).collect();
    let mut expected = vec!["v1.package.created"];
    expected.extend(std::iter::repeat_n("v1.file.ingested", fixtures.len()));
    expected.push("v1.package.finalized");
    assert_eq!(types, expected);
    assert_eq!(
        log.last().unwrap().payload.as_ref(),
        stored.cbor.as_slice(),
        "finalized payload is the manifest"
    );
    assert!(log.iter().all(|e| e.subject_id == package.id.0));

    // Replay reproduces the views exactly.
    let client = env.db.client().await;
    let before = events::dump_views(&client).await.unwrap();
    events::replay(env.registry.pool(), false).await.unwrap();
    assert_eq!(events::dump_views(&client).await.unwrap(), before);
}

#[tokio::test]
async fn bad_ingests_keep_nothing() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    let package = reg.create_package(&tenant, new_package("p")).await.unwrap();
    let data = random_bytes(300_000, 3);
    let digest = DualHasher::digest(&data);

    // Wrong expected digest (either algorithm): 422-class error, no bytes, no row, no event.
    for wrong in [
        DualHasher::digest(b"other").primary_address(),
        DualHasher::digest(b"other").sha256_address(),
    ] {
        let mut req = request("a.bin");
        req.expected_digest = Some(wrong);
        let err = reg
            .ingest_file(&tenant, package.id, req, body(&data, 4096))
            .await
            .unwrap_err();
        match err {
            Error::DigestMismatch { expected, actual } => {
                assert_eq!(expected, wrong);
                assert!(digest.matches(&actual));
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    }
    assert_eq!(
        env.store.head(&digest.primary_address()).await.unwrap(),
        None
    );
    // A right expected digest (SHA-256 form) is accepted.
    let mut req = request("a.bin");
    req.expected_digest = Some(digest.sha256_address());
    reg.ingest_file(&tenant, package.id, req, body(&data, 4096))
        .await
        .unwrap();

    // A body that fails midway keeps nothing.
    let failing = futures::stream::iter(vec![
        Ok(bytes::Bytes::from_static(b"partial")),
        Err(std::io::Error::other("connection reset")),
    ]);
    let err = reg
        .ingest_file(&tenant, package.id, request("broken.bin"), failing)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Body(_)), "{err:?}");

    // Over the size limit: nothing kept.
    let small = Registry::new(reg.pool().clone(), reg.backends().clone()).with_limits(
        artifactstore::registry::Limits {
            max_file_size: 1000,
            max_files_per_package: 2,
            ..Default::default()
        },
    );
    let err = small
        .ingest_file(
            &tenant,
            package.id,
            request("big.bin"),
            body(&random_bytes(5000, 9), 100),
        )
        .await;
    assert!(matches!(err, Err(Error::LimitExceeded(_))), "{err:?}");
    // File-count limit (the package already holds one file; the limit is two).
    small
        .ingest_file(&tenant, package.id, request("two.bin"), body(b"2", 1))
        .await
        .unwrap();
    let err = small
        .ingest_file(&tenant, package.id, request("three.bin"), body(b"3", 1))
        .await;
    assert!(matches!(err, Err(Error::LimitExceeded(_))), "{err:?}");

    // Duplicate path: conflict unless replace.
    let err = reg
        .ingest_file(&tenant, package.id, request("a.bin"), body(b"new", 1))
        .await;
    assert!(matches!(err, Err(Error::Conflict(_))), "{err:?}");
    let mut replace = request("a.bin");
    replace.replace = true;
    let replaced = reg
        .ingest_file(&tenant, package.id, replace, body(b"new", 1))
        .await
        .unwrap();
    assert_eq!(replaced.size, 3);
    let pkg = reg.get_package(&tenant, package.id).await.unwrap();
    assert_eq!((pkg.file_count, pkg.total_size), (2, 4));

    // Bad media type.
    let mut req = request("m.bin");
    req.media_type = Some("nonsense".into());
    assert!(matches!(
        reg.ingest_file(&tenant, package.id, req, body(b"m", 1))
            .await,
        Err(Error::InvalidInput(_))
    ));

    // Manifest before finalize: not found, saying why.
    let err = reg.get_manifest(&tenant, package.id).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { what } if what.contains("still open")),
        "{err:?}"
    );

    // Finalized packages are immutable; finalizing twice conflicts.
    reg.finalize_package(&tenant, package.id, None)
        .await
        .unwrap();
    let err = reg
        .ingest_file(&tenant, package.id, request("late.bin"), body(b"late", 2))
        .await;
    assert!(matches!(err, Err(Error::Conflict(_))), "{err:?}");
    assert!(matches!(
        reg.finalize_package(&tenant, package.id, None).await,
        Err(Error::Conflict(_))
    ));

    // Exactly: created, two ingests (a.bin, two.bin), the replacement, finalized.
    env.registry.sequencer().numbered().await;
    let client = env.db.client().await;
    let log = events::read_after(&client, 0, 100, None, None)
        .await
        .unwrap();
    assert_eq!(
        log.len(),
        5,
        "{:?}",
        log.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    // No staging data left behind by any failure.
    let staging = std::fs::read_dir(env.store.root().join(".staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0);
}

#[tokio::test]
async fn tenants_are_isolated_and_unknown_ids_are_not_found() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let alice = TenantId::new("alice").unwrap();
    let bob = TenantId::new("bob").unwrap();
    let package = reg.create_package(&alice, new_package("p")).await.unwrap();
    let file = reg
        .ingest_file(&alice, package.id, request("x"), body(b"secret", 2))
        .await
        .unwrap();

    assert!(matches!(
        reg.get_package(&bob, package.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        reg.get_file(&bob, file.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        reg.read_file(&bob, file.id, None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        reg.ingest_file(&bob, package.id, request("y"), body(b"z", 1))
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        reg.finalize_package(&bob, package.id, None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        reg.get_package(&alice, PackageId::generate()).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        reg.get_file(&alice, FileId::generate()).await,
        Err(Error::NotFound { .. })
    ));
    let page = reg
        .list_packages(
            &bob,
            &PackageFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(page.items.is_empty());

    let err = reg
        .create_package(
            &alice,
            NewPackage {
                retention_class: Some("forever-ish".into()),
                ..new_package("p")
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("forever-ish")),
        "{err:?}"
    );
    let err = reg
        .create_package(
            &alice,
            NewPackage {
                producer: String::new(),
                ..new_package("p")
            },
        )
        .await;
    assert!(matches!(err, Err(Error::InvalidInput(_))));
}

#[tokio::test]
async fn listing_filters_and_pages_newest_first() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    let mut ids = Vec::new();
    for i in 0..7 {
        let meta = Metadata::new(BTreeMap::from([("parity".into(), (i % 2).to_string())])).unwrap();
        let p = reg
            .create_package(
                &tenant,
                NewPackage {
                    producer: if i < 4 { "a".into() } else { "b".into() },
                    subject: format!("s{i}"),
                    retention_class: Some(if i == 6 {
                        "long".into()
                    } else {
                        "short".into()
                    }),
                    metadata: meta,
                },
            )
            .await
            .unwrap();
        if i == 1 {
            reg.finalize_package(&tenant, p.id, None).await.unwrap();
        }
        ids.push(p.id);
    }
    let tenant_ref = &tenant;
    let all = |filter: PackageFilter| async move {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = reg
                .list_packages(
                    tenant_ref,
                    &PackageFilter {
                        cursor,
                        ..filter.clone()
                    },
                )
                .await
                .unwrap();
            out.extend(page.items.iter().map(|p| p.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    };
    let newest_first: Vec<_> = ids.iter().rev().copied().collect();
    assert_eq!(
        all(PackageFilter {
            limit: 2,
            ..Default::default()
        })
        .await,
        newest_first
    );
    assert_eq!(
        all(PackageFilter {
            limit: 1000,
            ..Default::default()
        })
        .await,
        newest_first
    );
    let by_producer = all(PackageFilter {
        limit: 3,
        producer: Some("a".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_producer, vec![ids[3], ids[2], ids[1], ids[0]]);
    let odd = all(PackageFilter {
        limit: 2,
        metadata: vec![("parity".into(), "1".into())],
        ..Default::default()
    })
    .await;
    assert_eq!(odd, vec![ids[5], ids[3], ids[1]]);
    let finalized = all(PackageFilter {
        limit: 5,
        status: Some(PackageStatus::Finalized),
        ..Default::default()
    })
    .await;
    assert_eq!(finalized, vec![ids[1]]);
    let long = all(PackageFilter {
        limit: 5,
        retention_class: Some("long".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(long, vec![ids[6]]);
    let subject = all(PackageFilter {
        limit: 5,
        subject: Some("s4".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(subject, vec![ids[4]]);
    assert!(
        reg.list_packages(
            &tenant,
            &PackageFilter {
                limit: 0,
                ..Default::default()
            }
        )
        .await
        .is_err()
    );

    // Pages are stable under concurrent inserts: a package created between two pages does not
    // shift the second page.
    let first = reg
        .list_packages(
            &tenant,
            &PackageFilter {
                limit: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    reg.create_package(&tenant, new_package("late"))
        .await
        .unwrap();
    let second = reg
        .list_packages(
            &tenant,
            &PackageFilter {
                limit: 3,
                cursor: first.next_cursor,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        second.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![ids[3], ids[2], ids[1]]
    );
}

#[tokio::test]
async fn bytes_lost_behind_the_stores_back_are_an_integrity_fault_not_not_found() {
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    let package = reg.create_package(&tenant, new_package("p")).await.unwrap();
    let file = reg
        .ingest_file(&tenant, package.id, request("x.bin"), body(b"soon gone", 3))
        .await
        .unwrap();
    env.store.delete(&file.content_address()).await.unwrap();
    match reg.read_file(&tenant, file.id, None).await {
        Err(Error::Integrity(message)) => assert!(message.contains("lost"), "{message}"),
        Err(other) => panic!("expected an integrity fault, got {other:?}"),
        Ok(_) => panic!("expected an integrity fault, got bytes"),
    }
}

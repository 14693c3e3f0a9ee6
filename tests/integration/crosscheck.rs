//! Independent implementations agree with us: Python's `cbor2` (canonical re-encoding),
//! `rfc8785` (JCS), `hashlib` and `blake3` (digests). Needs `python3` with those packages
//! (`pip install -r scripts/requirements-crosscheck.txt`); `.ci/run` installs them. Without
//! them the test fails, unless ARTIFACTSTORE_SKIP_CROSSCHECK=1 says to skip on purpose.

use crate::support::{TestEnv, body, random_bytes};
use artifactstore::domain::{Metadata, RelativePath, TenantId};
use artifactstore::manifest::Manifest;
use artifactstore::registry::{IngestRequest, NewPackage};
use std::collections::BTreeMap;
use std::process::Command;

#[tokio::test]
async fn python_cbor2_rfc8785_and_hashlib_agree() {
    if std::env::var("ARTIFACTSTORE_SKIP_CROSSCHECK").as_deref() == Ok("1") {
        eprintln!("skipping the Python cross-check: ARTIFACTSTORE_SKIP_CROSSCHECK=1");
        return;
    }
    let env = TestEnv::new().await;
    let reg = &env.registry;
    let tenant = TenantId::default_tenant();
    let out = env.dir.path().join("crosscheck");
    std::fs::create_dir_all(out.join("files")).unwrap();

    // Keys around CBOR's 23/24-byte head boundary, long values, non-ASCII and astral text.
    let metadata = Metadata::new(BTreeMap::from([
        ("a".into(), "short".into()),
        ("k".repeat(23), "x".into()),
        ("k".repeat(24), "y".into()),
        ("z".repeat(128), "é😀\u{e000}\u{1f600}".into()),
        (
            "build:url/path".into(),
            "https://ci.example/1?a=b&c=\"d\"".into(),
        ),
        ("control".into(), "tab\tnewline\nquote\"backslash\\".into()),
    ]))
    .unwrap();
    let mut files = Vec::new();
    for (i, (class, paths)) in [
        (
            "standard",
            vec![
                "a.txt",
                "B.txt",
                "dir/é.bin",
                "dir/😀/x",
                "\u{e000}.bin",
                "zz/",
            ],
        ),
        ("permanent", vec!["only.bin"]),
    ]
    .into_iter()
    .enumerate()
    {
        let package = reg
            .create_package(
                &tenant,
                NewPackage {
                    producer: "crosscheck".into(),
                    subject: format!("case {i} — ünïcode"),
                    retention_class: Some(class.into()),
                    metadata: metadata.clone(),
                },
            )
            .await
            .unwrap();
        for (j, path) in paths.iter().filter(|p| !p.ends_with('/')).enumerate() {
            let data = random_bytes(j * 40_000 + i, (i * 10 + j) as u64);
            let file = reg
                .ingest_file(
                    &tenant,
                    package.id,
                    IngestRequest {
                        relative_path: RelativePath::new(path).unwrap(),
                        media_type: Some("application/x.test+json; charset=utf-8".into()),
                        expected_digest: None,
                        replace: false,
                        if_match: None,
                    },
                    body(&data, 8192),
                )
                .await
                .unwrap();
            let name = format!("{i}-{j}");
            std::fs::write(out.join("files").join(&name), &data).unwrap();
            files.push(serde_json::json!({
                "path": name, "blake3": file.blake3.to_hex(), "sha256": file.sha256.to_hex(),
            }));
        }
        reg.finalize_package(&tenant, package.id, Some("crosscheck".into()))
            .await
            .unwrap();
        let stored = reg.get_manifest(&tenant, package.id).await.unwrap();
        std::fs::write(out.join(format!("case{i}.cbor")), &stored.cbor).unwrap();
        std::fs::write(
            out.join(format!("case{i}.json")),
            Manifest::jcs(&stored.cbor).unwrap(),
        )
        .unwrap();
        std::fs::write(
            out.join(format!("case{i}.digest")),
            stored.digest.to_string(),
        )
        .unwrap();
    }
    std::fs::write(out.join("files.json"), serde_json::to_vec(&files).unwrap()).unwrap();

    let python = std::env::var("ARTIFACTSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/crosscheck.py");
    let result = Command::new(&python).arg(script).arg(&out).output().unwrap_or_else(|e| {
        panic!("cannot run {python}: {e} (set ARTIFACTSTORE_PYTHON, or ARTIFACTSTORE_SKIP_CROSSCHECK=1)")
    });
    assert!(
        result.status.success(),
        "cross-check failed:\n{}{}\n(install with: pip install -r scripts/requirements-crosscheck.txt)",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        String::from_utf8_lossy(&result.stdout).contains("crosscheck ok: 2 manifests, 6 files")
    );
}

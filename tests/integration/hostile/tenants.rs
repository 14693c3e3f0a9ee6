//! Tenants and the operator: who defines retention classes, what one tenant can learn of another,
//! health and usage, development mode.

use super::*;

#[tokio::test]
async fn only_the_operator_defines_retention_classes_and_only_sane_ones() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let put = |token: &'static str, body: Value| {
        http.put(server.url("/retention-classes/century"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    for token in [ALPHA_ADMIN, ALPHA_WRITER] {
        let resp = put(token, json!({"duration_seconds": 1})).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    for seconds in [0u64, 3_155_760_001, 1_000_000_000_000_000] {
        let resp = put(OPERATOR, json!({"duration_seconds": seconds}))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{seconds}");
    }
    let defined = json_of(
        put(OPERATOR, json!({"duration_seconds": 3_155_760_000u64}))
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(defined["duration_seconds"], 3_155_760_000u64);
    // The longest class still finalizes.
    let p = json_of(
        http.post(server.url("/packages"))
            .bearer_auth(ALPHA_WRITER)
            .json(&json!({"producer": "p", "subject": "s", "retention_class": "century"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let id = p["id"].as_str().unwrap();
    let done = json_of(
        http.post(server.url(&format!("/packages/{id}/finalize")))
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(done["retention"]["expires_at"].is_string(), "{done}");
}

#[tokio::test]
async fn tenants_see_their_own_storage_times_never_another_tenants() {
    let env = TestEnv::new().await;
    let clock = Arc::new(TestClock::at(1_800_000_000));
    let registry = env
        .registry
        .clone()
        .with_clock(clock.clone() as Arc<dyn artifactstore::domain::Clock>);
    let (alpha, beta) = (
        TenantId::new("alpha").unwrap(),
        TenantId::new("beta").unwrap(),
    );
    let data = random_bytes(5000, 4);
    let mut packages = Vec::new();
    for tenant in [&alpha, &beta] {
        let p = registry
            .create_package(
                tenant,
                NewPackage {
                    producer: "p".into(),
                    subject: "s".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        registry
            .ingest_file(
                tenant,
                p.id,
                crate::support::ingest_request("same.bin"),
                body(&data, 1000),
            )
            .await
            .unwrap();
        packages.push(p.id);
        // Beta stores the same bytes a day later.
        clock.advance(86_400);
    }
    let alpha_time = "2027-01-15T08:00:00.000000Z";
    let beta_time = "2027-01-16T08:00:00.000000Z";
    registry
        .finalize_package(&beta, packages[1], None)
        .await
        .unwrap();
    let manifest = registry.get_manifest(&beta, packages[1]).await.unwrap();
    let json = artifactstore::manifest::Manifest::jcs(&manifest.cbor).unwrap();
    let json: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        json["storage_receipts"][0]["stored_at"], beta_time,
        "{json}"
    );
    let mine = registry
        .list_locations(None, None, Some(&beta), None, 10)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].stored_at.to_string(), beta_time);
    // The operator sees when the copy was written: alpha's upload.
    let all = registry
        .list_locations(None, None, None, None, 10)
        .await
        .unwrap();
    assert_eq!(all[0].stored_at.to_string(), alpha_time);
}

#[tokio::test]
async fn health_tells_anyone_the_status_and_only_admins_the_details() {
    let holes = Holes::new().await;
    let health = |token: Option<&'static str>| {
        let mut req = holes.http.get(holes.server.url("/health"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move { json_of(req.send().await.unwrap(), StatusCode::OK).await }
    };
    assert_eq!(health(None).await, json!({"status": "ok"}));
    assert_eq!(health(Some(ALPHA_READER)).await, json!({"status": "ok"}));
    assert_eq!(health(Some("not-a-token")).await, json!({"status": "ok"}));
    let admin = health(Some(ALPHA_ADMIN)).await;
    assert_eq!(admin["database"]["ok"], true, "{admin}");
    assert!(
        admin["backends"].is_array() && admin["events"].is_object(),
        "{admin}"
    );
    // What counts every tenant's activity is the operator's alone.
    assert!(admin["database"]["latest_sequence"].is_null(), "{admin}");
    assert!(admin["events"]["waiting_requests"].is_null(), "{admin}");
    let operator = health(Some(OPERATOR)).await;
    assert!(
        operator["database"]["latest_sequence"].is_i64(),
        "{operator}"
    );
    assert_eq!(operator["events"]["waiting_requests"], 0, "{operator}");
}

#[tokio::test]
async fn usage_reads_the_tenants_rows_not_every_blob() {
    let env = TestEnv::new().await;
    let tenant = TenantId::new("alpha").unwrap();
    let p = env
        .registry
        .create_package(
            &tenant,
            NewPackage {
                producer: "p".into(),
                subject: "s".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    env.registry
        .ingest_file(
            &tenant,
            p.id,
            crate::support::ingest_request("one.bin"),
            body(b"one", 3),
        )
        .await
        .unwrap();
    let client = env.db.client().await;
    // Many blobs of others (referenced: not part of the collection backlog).
    client
        .batch_execute(
            "INSERT INTO blobs (blake3, sha256, size, created_at) \
             SELECT sha256(('b' || i)::bytea), sha256(('s' || i)::bytea), 100, now() \
             FROM generate_series(1, 20000) i; ANALYZE blobs; ANALYZE files;",
        )
        .await
        .unwrap();
    let plan: Value = client
        .query_one(
            &format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) {}",
                artifactstore::registry::USAGE_SQL
            ),
            &[&"alpha", &time::OffsetDateTime::now_utc()],
        )
        .await
        .unwrap()
        .get(0);
    fn blob_rows(node: &Value) -> u64 {
        let own = if node["Relation Name"] == "blobs" {
            let rows = node["Actual Rows"].as_f64().unwrap_or(0.0)
                + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
            (rows * node["Actual Loops"].as_f64().unwrap_or(1.0)) as u64
        } else {
            0
        };
        own + node["Plans"]
            .as_array()
            .map_or(0, |plans| plans.iter().map(blob_rows).sum())
    }
    let read = blob_rows(&plan[0]["Plan"]);
    assert!(read < 100, "usage read {read} blob rows: {plan}");
    let usage = env.registry.usage(&tenant).await.unwrap();
    assert_eq!(
        (usage.files, usage.logical_bytes, usage.physical_bytes),
        (1, 3, 3)
    );
}

#[test]
fn without_tokens_the_server_stays_on_loopback_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
        cmd.args(["serve", "--listen", "0.0.0.0:0"])
            .env("ARTIFACTSTORE_DATA_DIR", dir.path())
            .env(
                "ARTIFACTSTORE_DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none",
            )
            .env_remove("ARTIFACTSTORE_TOKENS")
            .env_remove("ARTIFACTSTORE_TOKENS_FILE");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("ARTIFACTSTORE_DEV_MODE"), "{stderr}");
    // With dev mode it goes on (and fails later, at the unreachable database).
    let out = run(&[("ARTIFACTSTORE_DEV_MODE", "true")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("ARTIFACTSTORE_DEV_MODE"), "{stderr}");
    // A tokens file named on purpose but empty is a mistake, not development mode.
    let empty = dir.path().join("tokens.toml");
    std::fs::write(&empty, "# no tokens yet\n").unwrap();
    let out = run(&[("ARTIFACTSTORE_TOKENS_FILE", empty.to_str().unwrap())]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("ARTIFACTSTORE_TOKENS_FILE"), "{stderr}");
}

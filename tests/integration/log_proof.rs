//! The provable log: every event chained, signed checkpoints, public keys, and `log verify`
//! finding history that was edited, removed, reordered, truncated or rewritten.

use crate::support::{Server, TestDb, output_text};
use artifactstore::events::chain::{GENESIS, digest, link};
use serde_json::Value;
use std::process::{Command, Output};

const TOKENS: &str = "acme:read+write+admin:acme-token,globex:read+write:globex-token";

/// `artifactstore log verify` on the test database, with `args`.
fn log_verify(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(["log", "verify", "--quiet"])
        .args(args)
        .env("ARTIFACTSTORE_DATABASE_URL", &db.url)
        .env(
            "ARTIFACTSTORE_DATA_DIR",
            std::env::temp_dir().join("log-verify-unused"),
        )
        .env("ARTIFACTSTORE_METRICS_LISTEN", "")
        .output()
        .unwrap()
}

/// Runs `sql` with the events table's own triggers off (an attacker with the database's
/// owner role), then on again.
async fn tamper(db: &TestDb, sql: &str) {
    db.client()
        .await
        .batch_execute(&format!(
            "BEGIN; ALTER TABLE events DISABLE TRIGGER USER; {sql}; \
             ALTER TABLE events ENABLE TRIGGER USER; COMMIT"
        ))
        .await
        .unwrap();
}

/// `method path` on the server, with `token` if given.
async fn call(
    server: &Server,
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = http.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

/// Ten events from two tenants, a checkpoint made on demand; what a client sees of both.
async fn some_history(server: &Server, http: &reqwest::Client) -> Value {
    for (token, subject) in [("acme-token", "a"), ("globex-token", "g")] {
        for i in 0..5 {
            server
                .create_package(http, token, &format!("{subject}{i}"))
                .await;
        }
    }
    let resp = call(
        server,
        http,
        reqwest::Method::POST,
        "/log/checkpoints",
        Some("acme-token"),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    json(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_chained_and_checkpoints_signed() {
    let db = TestDb::new().await;
    let server = Server::start(
        &db,
        &[
            ("ARTIFACTSTORE_TOKENS", TOKENS),
            ("ARTIFACTSTORE_CHECKPOINT_SECONDS", "1"),
        ],
    );
    let http = reqwest::Client::new();
    let checkpoint = some_history(&server, &http).await;
    assert_eq!(checkpoint["sequence"], 10);

    // The latest checkpoint is the one made; a tenant without admin may read it, not make one.
    use reqwest::Method;
    for (method, path, token, status) in [
        (Method::GET, "/log/checkpoint", Some("globex-token"), 200),
        (Method::POST, "/log/checkpoints", Some("globex-token"), 403),
        (Method::GET, "/log/checkpoint", None, 401),
    ] {
        let resp = call(&server, &http, method, path, token).await;
        assert_eq!(resp.status().as_u16(), status, "{path} {token:?}");
        if status == 200 {
            assert_eq!(json(resp).await, checkpoint);
        }
    }

    // The public key needs no token, and verifies the signature over the documented text.
    let keys = json(http.get(server.url("/keys")).send().await.unwrap()).await;
    let key = &keys["keys"][0];
    assert_eq!(key["key_id"], checkpoint["key_id"]);
    assert_eq!(key["current"], true);
    let public =
        artifactstore::signing::public_key_from_pem(key["public_key_pem"].as_str().unwrap())
            .unwrap();
    let text = format!(
        "artifactstore log checkpoint v1\nsequence {}\nchain {}\ntime {}\n",
        checkpoint["sequence"],
        checkpoint["chain"].as_str().unwrap(),
        checkpoint["time"].as_str().unwrap()
    );
    let signature = hex::decode(checkpoint["signature"].as_str().unwrap()).unwrap();
    assert!(artifactstore::signing::verify(
        &public,
        text.as_bytes(),
        &signature
    ));

    // A tenant follows the chain through its own events with the digests of the others'
    // (here recomputed from the whole log, which an operator may read).
    let all = db.client().await;
    let events = artifactstore::events::read_after(&all, 0, 100, None, None)
        .await
        .unwrap();
    let mut chain = GENESIS;
    for event in &events {
        chain = link(&chain, event.sequence, &digest(event));
        assert_eq!(event.chain, Some(chain), "event {}", event.sequence);
    }
    assert_eq!(hex::encode(chain), checkpoint["chain"]);
    let page = json(
        http.get(server.url("/events?since=0"))
            .bearer_auth("globex-token")
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let own = page["events"].as_array().unwrap();
    assert_eq!(own.len(), 5, "globex sees its own five");
    for event in own {
        let sequence = event["sequence"].as_i64().unwrap();
        let stored = events.iter().find(|e| e.sequence == sequence).unwrap();
        assert_eq!(event["chain"], hex::encode(stored.chain.unwrap()));
    }

    // Checkpoints also come by themselves while the log grows.
    server.create_package(&http, "acme-token", "eleventh").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = call(
            &server,
            &http,
            reqwest::Method::GET,
            "/log/checkpoints?since=10",
            Some("acme-token"),
        )
        .await;
        let page = json(page).await;
        if page["items"].as_array().unwrap().len() == 1 {
            assert_eq!(page["items"][0]["sequence"], 11);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic checkpoint"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let out = log_verify(&db, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("the log is intact: 11 events"), "{text}");
}

/// Each kind of tampering is found and named by sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_verify_finds_edited_removed_reordered_truncated_and_rewritten_history() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    let checkpoint = some_history(&server, &http).await;
    let keys = json(http.get(server.url("/keys")).send().await.unwrap()).await;
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("checkpoint.json");
    std::fs::write(&saved, checkpoint.to_string()).unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, keys["keys"][0]["public_key_pem"].as_str().unwrap()).unwrap();
    let given = [
        "--from-checkpoint",
        saved.to_str().unwrap(),
        "--key",
        pem.to_str().unwrap(),
    ];
    assert!(log_verify(&db, &given).status.success());

    // Edited: one event's payload; only its own link breaks, and the checkpoint disagrees.
    tamper(
        &db,
        "UPDATE events SET occurred_at = occurred_at + interval '1 second' WHERE sequence = 4",
    )
    .await;
    let out = log_verify(&db, &given);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("event 4 does not match its chain"), "{text}");
    assert!(!text.contains("event 5 does not match"), "{text}");
    assert!(
        text.contains("at event 10 does not match the log"),
        "{text}"
    );
    tamper(
        &db,
        "UPDATE events SET occurred_at = occurred_at - interval '1 second' WHERE sequence = 4",
    )
    .await;
    assert!(log_verify(&db, &given).status.success(), "restored");

    // Reordered: two events swap places (and back).
    let swap = "UPDATE events SET sequence = 1000000 WHERE sequence = 6; \
                UPDATE events SET sequence = 6 WHERE sequence = 7; \
                UPDATE events SET sequence = 7 WHERE sequence = 1000000";
    tamper(&db, swap).await;
    let text = output_text(&log_verify(&db, &given));
    assert!(text.contains("event 6 does not match"), "{text}");
    assert!(text.contains("event 7 does not match"), "{text}");
    tamper(&db, swap).await;
    assert!(log_verify(&db, &given).status.success(), "restored");

    // Rewritten: an event edited and every stored chain after it recomputed to match (and
    // the stored checkpoint deleted): the links hold, the saved checkpoint does not.
    let client = db.client().await;
    tamper(&db, "UPDATE events SET type = 'v1.package.forged' WHERE sequence = 2; DELETE FROM log_checkpoints").await;
    let events = artifactstore::events::read_after(&client, 0, 100, None, None)
        .await
        .unwrap();
    let mut chain = GENESIS;
    let mut rechain = String::new();
    for event in &events {
        chain = link(&chain, event.sequence, &digest(event));
        rechain.push_str(&format!(
            "UPDATE events SET chain = '\\x{}' WHERE sequence = {};",
            hex::encode(chain),
            event.sequence
        ));
    }
    tamper(&db, &rechain).await;
    client
        .execute(
            "UPDATE event_counter SET last_chain = $1",
            &[&chain.as_slice()],
        )
        .await
        .unwrap();
    let without = log_verify(&db, &[]);
    assert!(
        without.status.success(),
        "without a saved checkpoint a full rewrite is consistent: {}",
        output_text(&without)
    );
    let text = output_text(&log_verify(&db, &given));
    assert!(
        text.contains("the given checkpoint at event 10 does not match the log"),
        "{text}"
    );

    // Removed and truncated: a hole, then the last events gone.
    tamper(&db, "DELETE FROM events WHERE sequence = 5").await;
    let text = output_text(&log_verify(&db, &given));
    assert!(text.contains("events 5..=5 are missing"), "{text}");
    tamper(&db, "DELETE FROM events WHERE sequence > 8").await;
    let text = output_text(&log_verify(&db, &given));
    assert!(
        text.contains("the log ends at event 8, but the event counter says it reached 10"),
        "{text}"
    );
    assert!(
        text.contains("the given checkpoint says it reached 10"),
        "{text}"
    );

    // A checkpoint with a forged signature, or signed by a key nobody knows.
    let mut forged = checkpoint.clone();
    forged["sequence"] = 8.into();
    std::fs::write(&saved, forged.to_string()).unwrap();
    let text = output_text(&log_verify(&db, &given));
    assert!(
        text.contains("the checkpoint at event 8: the signature does not verify"),
        "{text}"
    );
}

/// Events numbered before the chain existed (or by a process that does not chain) are
/// chained by the next numbering pass, in order, to the same values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_numbered_without_a_chain_are_chained_by_the_next_pass() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    some_history(&server, &http).await;
    drop(server);
    let client = db.client().await;
    let before = artifactstore::events::read_after(&client, 0, 100, None, None)
        .await
        .unwrap();
    // Some written by a binary that stored no digest either: computed from their contents.
    tamper(
        &db,
        "UPDATE events SET chain = NULL; UPDATE events SET digest = NULL WHERE sequence > 5",
    )
    .await;
    client
        .batch_execute(
            "UPDATE event_counter SET chained_through = 0, \
             last_chain = decode(repeat('00', 32), 'hex')",
        )
        .await
        .unwrap();
    let out = log_verify(&db, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        output_text(&out).contains("events 1..=10 have no chain yet"),
        "{}",
        output_text(&out)
    );

    let pool = db.pool(1);
    let mut conn = pool.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    assert_eq!(
        artifactstore::events::number_committed(&tx).await.unwrap(),
        0
    );
    tx.commit().await.unwrap();
    let after = artifactstore::events::read_after(&client, 0, 100, None, None)
        .await
        .unwrap();
    assert_eq!(before, after, "the same chains, recomputed");
    assert!(log_verify(&db, &[]).status.success());
    // A chain once set stays: the table refuses to change it.
    let refused = client
        .execute("UPDATE events SET chain = NULL WHERE sequence = 1", &[])
        .await;
    assert!(refused.is_err());
}

/// A long unchained past (an upgraded store's) is chained a bounded number of events per
/// pass; new events are numbered meanwhile, without a chain, and chained in their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_unchained_past_is_chained_in_bounded_passes() {
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let start = || Server::start_in(&db.url, data.path(), &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let server = start();
    let http = reqwest::Client::new();
    some_history(&server, &http).await;
    drop(server); // its sequencer's passes would race this test's
    // 25,000 more events, numbered 11..=25,010 with neither digest nor chain.
    tamper(
        &db,
        "INSERT INTO events (sequence, position, ticket, id, type, tenant, subject_id, \
                             occurred_at, payload) \
         SELECT n, nextval('event_positions'), nextval('event_tickets'), gen_random_uuid(), \
                'v1.test.old', 'acme', gen_random_uuid(), now(), '\\xa0'::bytea \
         FROM generate_series(11, 25010) AS n; \
         UPDATE event_counter SET last_sequence = 25010",
    )
    .await;
    let client = db.client().await;
    let counter = || async {
        let row = client
            .query_one(
                "SELECT last_sequence, chained_through FROM event_counter",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    let pool = db.pool(1);
    let pass = || async {
        let mut conn = pool.get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        let numbered = artifactstore::events::number_committed(&tx).await.unwrap();
        tx.commit().await.unwrap();
        numbered
    };
    assert_eq!(pass().await, 0);
    assert_eq!(
        counter().await,
        (25_010, 20_010),
        "one pass chains at most 20,000"
    );
    // A new event meanwhile: numbered at once, chained later.
    let server = start();
    server.create_package(&http, "acme-token", "new").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while counter().await != (25_011, 25_011) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            counter().await
        );
        pass().await;
    }
    let out = log_verify(&db, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// `verify-package` on `dir` with these inputs: its exit code and report.
fn verify_package(
    dir: &std::path::Path,
    manifest: &std::path::Path,
    attestation: &std::path::Path,
    key: &std::path::Path,
) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .arg("verify-package")
        .arg(dir)
        .arg("--manifest")
        .arg(manifest)
        .arg("--attestation")
        .arg(attestation)
        .arg("--key")
        .arg(key)
        .arg("--quiet")
        .output()
        .unwrap();
    (out.status.code(), output_text(&out))
}

/// A finalized package's attestation is signed at finalize; offline, with the public key
/// alone, `verify-package` accepts the package's bytes and refuses changed bytes, another
/// manifest, and another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_verify_offline_with_the_public_key_alone() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    let get = |path: String, token: &'static str| {
        let request = http.get(server.url(&path)).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    let files = [
        ("bin/tool", b"tool bytes".to_vec()),
        ("README.md", b"# hello\n".to_vec()),
    ];
    let mut ids = Vec::new();
    for subject in ["one", "two"] {
        let id = server.create_package(&http, "acme-token", subject).await;
        for (path, bytes) in &files {
            let resp = http
                .put(server.url(&format!("/packages/{id}/files/{path}")))
                .bearer_auth("acme-token")
                .body(
                    format!("{subject}: ")
                        .into_bytes()
                        .into_iter()
                        .chain(bytes.clone())
                        .collect::<Vec<u8>>(),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
        }
        ids.push(id);
    }
    let open = get(format!("/packages/{}/attestation", ids[0]), "acme-token").await;
    assert_eq!(open.status().as_u16(), 404, "an open package has none yet");
    let dir = tempfile::tempdir().unwrap();
    let save = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut manifests = Vec::new();
    for id in &ids {
        let resp = call(
            &server,
            &http,
            reqwest::Method::POST,
            &format!("/packages/{id}/finalize"),
            Some("acme-token"),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200);
        let manifest = get(format!("/packages/{id}/manifest"), "acme-token")
            .await
            .bytes()
            .await
            .unwrap();
        manifests.push(save(&format!("{id}.cbor"), &manifest));
    }
    let resp = get(format!("/packages/{}/attestation", ids[0]), "acme-token").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.dsse.envelope.v1+json"
    );
    let attestation = save("attestation.json", &resp.bytes().await.unwrap());
    let other_tenant = get(format!("/packages/{}/attestation", ids[0]), "globex-token").await;
    assert_eq!(other_tenant.status().as_u16(), 404);
    let keys = json(call(&server, &http, reqwest::Method::GET, "/keys", None).await).await;
    let key = save(
        "key.pem",
        keys["keys"][0]["public_key_pem"]
            .as_str()
            .unwrap()
            .as_bytes(),
    );

    // The files as `pull` would write them.
    let tree = dir.path().join("tree");
    for (path, bytes) in &files {
        let path = tree.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, [b"one: ".as_slice(), bytes].concat()).unwrap();
    }
    let (code, text) = verify_package(&tree, &manifests[0], &attestation, &key);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("verified: 2 files"), "{text}");

    let (code, text) = verify_package(&tree, &manifests[1], &attestation, &key);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("is not the one the attestation names"),
        "{text}"
    );

    let stranger =
        artifactstore::signing::SigningKey::load_or_generate(&dir.path().join("other.key"))
            .unwrap();
    let stranger = save(
        "stranger.pem",
        artifactstore::signing::public_key_pem(&stranger.public_key())
            .unwrap()
            .as_bytes(),
    );
    let (code, text) = verify_package(&tree, &manifests[0], &attestation, &stranger);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no signature in the envelope verifies"),
        "{text}"
    );

    std::fs::write(tree.join("README.md"), b"one: # changed\n").unwrap();
    let (code, text) = verify_package(&tree, &manifests[0], &attestation, &key);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("README.md: its bytes differ"), "{text}");
    assert!(!text.contains("bin/tool"), "{text}");

    // A withdrawn package's attestation stays, as its manifest does.
    let withdrawn = call(
        &server,
        &http,
        reqwest::Method::DELETE,
        &format!("/packages/{}", ids[0]),
        Some("acme-token"),
    )
    .await;
    assert_eq!(withdrawn.status().as_u16(), 200);
    let after = get(format!("/packages/{}/attestation", ids[0]), "acme-token").await;
    assert_eq!(after.status().as_u16(), 200);
}

/// A tenant proves its events are in the signed history with what the API gives it alone:
/// its events in CBOR (whose digests it recomputes), every event's digest and chain from
/// `GET /log/links` (nothing of another tenant's contents), a checkpoint and the public key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_proves_its_events_are_in_a_checkpoint() {
    use artifactstore::manifest::canonical::{decode_value, encode_value};
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    let checkpoint = some_history(&server, &http).await;
    let globex = Some("globex-token");
    let page = call(
        &server,
        &http,
        reqwest::Method::GET,
        "/events?since=0",
        globex,
    )
    .await;
    let page = decode_value(&page.bytes().await.unwrap()).unwrap();
    let events = page
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some("events"));
    let mut own = std::collections::HashMap::new();
    for event in events.unwrap().1.as_array().unwrap() {
        let fields = event.as_map().unwrap();
        let sequence = fields.iter().find(|(k, _)| k.as_text() == Some("sequence"));
        let sequence: i64 = sequence
            .unwrap()
            .1
            .as_integer()
            .unwrap()
            .try_into()
            .unwrap();
        let content: Vec<_> = fields
            .iter()
            .filter(|(k, _)| !matches!(k.as_text(), Some("sequence" | "chain")))
            .cloned()
            .collect();
        let bytes = encode_value(ciborium::value::Value::Map(content)).unwrap();
        own.insert(sequence, hex::encode(blake3::hash(&bytes).as_bytes()));
    }
    assert_eq!(own.len(), 5);

    let links = call(
        &server,
        &http,
        reqwest::Method::GET,
        "/log/links?since=0",
        globex,
    )
    .await;
    let links = json(links).await;
    let mut chain = GENESIS;
    for item in links["items"].as_array().unwrap() {
        let sequence = item["sequence"].as_i64().unwrap();
        let digest: [u8; 32] = hex::decode(item["digest"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        if let Some(mine) = own.remove(&sequence) {
            assert_eq!(
                mine,
                hex::encode(digest),
                "event {sequence}: its own digest"
            );
        }
        chain = link(&chain, sequence, &digest);
        assert_eq!(item["chain"], hex::encode(chain), "event {sequence}");
        if sequence == checkpoint["sequence"].as_i64().unwrap() {
            assert_eq!(
                checkpoint["chain"],
                hex::encode(chain),
                "the checkpoint's chain"
            );
        }
    }
    assert!(own.is_empty(), "every own event is in the links: {own:?}");
}

/// Keys rotate: a server given a new key file signs with it, `GET /keys` lists both, and what
/// the old key signed (a checkpoint, an attestation) keeps verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_rotated_out_key_signed_keeps_verifying() {
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let key_files: Vec<String> = ["old.pem", "new.pem"]
        .iter()
        .map(|name| {
            let path = keys_dir.path().join(name);
            artifactstore::signing::SigningKey::load_or_generate(&path).unwrap();
            path.to_str().unwrap().to_owned()
        })
        .collect();
    let start = |key: &str| {
        Server::start_in(
            &db.url,
            data.path(),
            &[
                ("ARTIFACTSTORE_TOKENS", TOKENS),
                ("ARTIFACTSTORE_SIGNING_KEY_FILE", key),
            ],
        )
    };
    let http = reqwest::Client::new();
    let server = start(&key_files[0]);
    let old = some_history(&server, &http).await;
    drop(server);
    let server = start(&key_files[1]);
    let new = some_history(&server, &http).await;
    assert_ne!(old["key_id"], new["key_id"]);
    let keys = json(call(&server, &http, reqwest::Method::GET, "/keys", None).await).await;
    let listed: Vec<(&str, bool)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key_id"].as_str().unwrap(),
                k["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (old["key_id"].as_str().unwrap(), false),
            (new["key_id"].as_str().unwrap(), true)
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("old-checkpoint.json");
    std::fs::write(&saved, old.to_string()).unwrap();
    let out = log_verify(&db, &["--from-checkpoint", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("3 checkpoints verified"),
        "{}",
        output_text(&out)
    );
}

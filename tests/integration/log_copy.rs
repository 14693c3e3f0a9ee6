//! A tenant's saved copy of the log's proofs (`log save`, with its token alone), brought up to
//! date as the log grows, verified offline (`log verify --copy`) with the public key: edited
//! events, removed or edited links and checkpoints signed by another key are each reported,
//! and a save cut short is completed by the next.

use crate::support::{Server, TestDb, client_command, output_text};
use artifactstore::manifest::canonical::encode_value;
use artifactstore::registry::log_copy::{EVENTS_FILE, LINKS_FILE};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const TOKENS: &str = "acme:read+write+admin:acme-token,globex:read+write:globex-token";

/// `log save DIR` as tenant globex; it must succeed and say `says`.
fn save(server: &Server, dir: &Path, says: &str) {
    let dir = dir.to_str().unwrap();
    let out = client_command(
        &server.base,
        "globex-token",
        &["log", "save", dir, "--quiet"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(output_text(&out).contains(says), "{}", output_text(&out));
}

/// `log verify --copy DIR`, offline: no server, no database settings.
fn verify_copy(dir: &Path, key: Option<&Path>) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
    command
        .args(["log", "verify", "--quiet", "--copy"])
        .arg(dir)
        .env_remove("ARTIFACTSTORE_DATABASE_URL")
        .env("ARTIFACTSTORE_DATA_DIR", "/nonexistent/no-store-here");
    if let Some(key) = key {
        command.arg("--key").arg(key);
    }
    let out = command.output().unwrap();
    (out.status.code(), output_text(&out))
}

async fn checkpoint(server: &Server, http: &reqwest::Client) {
    let resp = http
        .post(server.url("/log/checkpoints"))
        .bearer_auth("acme-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
}

/// A copy of `from` in a new directory under `parent`, changed by `change`.
fn tampered(
    from: &Path,
    parent: &Path,
    name: &str,
    change: impl FnOnce(&Path),
) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    change(&dir);
    dir
}

fn edit_lines(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    edit(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_copy_of_the_log_verifies_offline_and_shows_tampering() {
    let db = TestDb::new().await;
    let server = Server::start(&db, &[("ARTIFACTSTORE_TOKENS", TOKENS)]);
    let http = reqwest::Client::new();
    for (token, subject) in [
        ("acme-token", "a"),
        ("globex-token", "g"),
        ("acme-token", "b"),
    ] {
        for i in 0..4 {
            server
                .create_package(&http, token, &format!("{subject}{i}"))
                .await;
        }
    }
    checkpoint(&server, &http).await;
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("copy");
    let keys: Value = http
        .get(server.url("/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = work.path().join("key.pem");
    std::fs::write(&key, keys["keys"][0]["public_key_pem"].as_str().unwrap()).unwrap();

    save(&server, &copy, "saved 12 links, 4 events and 1 checkpoints");
    let (code, text) = verify_copy(&copy, Some(&key));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("the copy is intact: 12 events chained, 1 checkpoints verified"),
        "{text}"
    );

    // The log grows; saving again appends. A save cut short (a partial line, a partial CBOR
    // item) is completed by the next one.
    for i in 0..3 {
        server
            .create_package(&http, "globex-token", &format!("later{i}"))
            .await;
    }
    checkpoint(&server, &http).await;
    let mut partial = std::fs::OpenOptions::new()
        .append(true)
        .open(copy.join(LINKS_FILE))
        .unwrap();
    std::io::Write::write_all(&mut partial, b"{\"sequence\":13,\"dig").unwrap();
    let events = std::fs::read(copy.join(EVENTS_FILE)).unwrap();
    let mut partial = std::fs::OpenOptions::new()
        .append(true)
        .open(copy.join(EVENTS_FILE))
        .unwrap();
    std::io::Write::write_all(&mut partial, &events[..7]).unwrap();
    // Verifying reports the partial entries and changes nothing; the next save completes them.
    let before = std::fs::read(copy.join(LINKS_FILE)).unwrap();
    let (code, text) = verify_copy(&copy, Some(&key));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("links.jsonl ends inside an entry"), "{text}");
    assert!(text.contains("events.cbor ends inside an entry"), "{text}");
    assert_eq!(std::fs::read(copy.join(LINKS_FILE)).unwrap(), before);
    save(&server, &copy, "saved 3 links, 3 events and 1 checkpoints");
    let (code, text) = verify_copy(&copy, Some(&key));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("15 events chained, 2 checkpoints verified"),
        "{text}"
    );
    assert!(
        text.contains("7 of the tenant's own events compared"),
        "{text}"
    );
    // Without a key of one's own: the copy's keys, with a warning.
    let (code, text) = verify_copy(&copy, None);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("give --key to trust only a key you hold"),
        "{text}"
    );

    // One of the tenant's events edited in the copy.
    let edited = tampered(&copy, work.path(), "edited-event", |dir| {
        let bytes = std::fs::read(dir.join(EVENTS_FILE)).unwrap();
        let mut rest = bytes.as_slice();
        let mut out = Vec::new();
        let mut first = true;
        while !rest.is_empty() {
            let item: ciborium::Value = ciborium::from_reader(&mut rest).unwrap();
            let item = if first {
                first = false;
                let ciborium::Value::Map(fields) = item else {
                    panic!()
                };
                ciborium::Value::Map(
                    fields
                        .into_iter()
                        .map(|(k, v)| {
                            if k.as_text() == Some("occurred_at") {
                                (
                                    k,
                                    ciborium::Value::Text("2020-01-01T00:00:00.000000Z".into()),
                                )
                            } else {
                                (k, v)
                            }
                        })
                        .collect(),
                )
            } else {
                item
            };
            out.extend(encode_value(item).unwrap());
        }
        std::fs::write(dir.join(EVENTS_FILE), out).unwrap();
    });
    let (code, text) = verify_copy(&edited, Some(&key));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("the saved event 5 is not the event the log holds there"),
        "{text}"
    );

    // A forged version of an event saved before the real one; the checkpoints dropped.
    let forged = tampered(&copy, work.path(), "forged-event", |dir| {
        let bytes = std::fs::read(dir.join(EVENTS_FILE)).unwrap();
        let first: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
        let ciborium::Value::Map(fields) = first else {
            panic!()
        };
        let forged = ciborium::Value::Map(
            fields
                .into_iter()
                .map(|(k, v)| match k.as_text() {
                    Some("type") => (k, ciborium::Value::Text("v1.package.forged".into())),
                    _ => (k, v),
                })
                .collect(),
        );
        std::fs::write(
            dir.join(EVENTS_FILE),
            [encode_value(forged).unwrap(), bytes].concat(),
        )
        .unwrap();
    });
    let (code, text) = verify_copy(&forged, Some(&key));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("event 5 comes after event 5"), "{text}");
    let unsigned = tampered(&copy, work.path(), "unsigned", |dir| {
        std::fs::write(dir.join("checkpoints.jsonl"), b"").unwrap();
    });
    let (code, text) = verify_copy(&unsigned, Some(&key));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("nothing in it is signed"), "{text}");

    // A link removed, and a link's digest changed.
    let removed = tampered(&copy, work.path(), "removed-link", |dir| {
        edit_lines(&dir.join(LINKS_FILE), |lines| {
            lines.remove(6);
        });
    });
    let (code, text) = verify_copy(&removed, Some(&key));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("events 7..=7 are missing"), "{text}");
    let changed = tampered(&copy, work.path(), "changed-link", |dir| {
        edit_lines(&dir.join(LINKS_FILE), |lines| {
            let mut link: Value = serde_json::from_str(&lines[2]).unwrap();
            link["digest"] = Value::String("ab".repeat(32));
            lines[2] = link.to_string();
        });
    });
    let (code, text) = verify_copy(&changed, Some(&key));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("event 3 does not match its chain"), "{text}");
    assert!(
        text.contains("at event 12 does not match the log: the history up to it was rewritten"),
        "{text}"
    );

    // Checkpoints checked with a key that did not sign them.
    let stranger =
        artifactstore::signing::SigningKey::load_or_generate(&work.path().join("s.key")).unwrap();
    let stranger_pem = work.path().join("stranger.pem");
    std::fs::write(
        &stranger_pem,
        artifactstore::signing::public_key_pem(&stranger.public_key()).unwrap(),
    )
    .unwrap();
    let (code, text) = verify_copy(&copy, Some(&stranger_pem));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("signed by an unknown key"), "{text}");

    // Not a copy at all.
    let (code, text) = verify_copy(work.path(), Some(&key));
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("is this a saved copy?"), "{text}");
}

//! TLS to PostgreSQL: `sslmode=require` encrypts and verifies the server's certificate (CA
//! from `sslrootcert`, host name or IP address), for the pool, single connections, the event
//! listener and the whole server; URLs without it stay plaintext.
//!
//! The shared test cluster is switched to `ssl = on` for the test (with a certificate made
//! here by the `openssl` command) and back afterwards; clients that do not ask for TLS are not
//! affected meanwhile.

use crate::support::Server;
use crate::support::TestDb;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `openssl` in `dir` with `args` (split at spaces).
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {name}.key -out {name}.pem -days 2 -subj /CN={name}"
        ),
    );
}

/// A server certificate for IP 127.0.0.1 only (no DNS name), signed by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    openssl(
        dir,
        "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout server.key -out server.csr -subj /CN=127.0.0.1",
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &format!(
            "x509 -req -in server.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
             -out server.pem -days 2 -extfile server.ext"
        ),
    );
}

/// Why connecting to `url` fails (it must).
async fn refusal(url: &str) -> String {
    match artifactstore::db::connect(url).await {
        Ok(_) => panic!("connecting to {url} must fail"),
        Err(e) => e.to_string(),
    }
}

async fn health(server: &Server) -> serde_json::Value {
    reqwest::get(server.url("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `url` with query options added.
fn with_options(url: &str, options: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{options}")
}

async fn ssl_in_use(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Turns TLS on in the test cluster with the certificate in `certs`; returns a guard that
/// turns it off again.
async fn enable_ssl(admin: &tokio_postgres::Client, certs: &Path) -> SslOn {
    let data_dir: String = admin
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let data_dir = PathBuf::from(data_dir);
    let owner = std::fs::metadata(&data_dir).unwrap();
    for (from, to) in [
        ("server.pem", "tls-test.crt"),
        ("server.key", "tls-test.key"),
    ] {
        let dest = data_dir.join(to);
        std::fs::copy(certs.join(from), &dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&dest, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    // One statement each: ALTER SYSTEM cannot run in a (multi-statement) transaction.
    for statement in [
        "ALTER SYSTEM SET ssl_cert_file = 'tls-test.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'tls-test.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    SslOn
}

/// Turns TLS off again in the test cluster when dropped (the certificate files stay, so a
/// restart with the setting left on by a crashed test still starts).
struct SslOn;

impl Drop for SslOn {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let db = TestDb::new().await;
                let admin = db.client().await;
                for statement in [
                    "ALTER SYSTEM RESET ssl",
                    "ALTER SYSTEM RESET ssl_cert_file",
                    "ALTER SYSTEM RESET ssl_key_file",
                    "SELECT pg_reload_conf()",
                ] {
                    let _ = admin.batch_execute(statement).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn sslmode_require_encrypts_and_verifies_the_server_certificate() {
    if std::env::var("ARTIFACTSTORE_TEST_DATABASE_URL").is_ok() {
        eprintln!("skipped: the test turns TLS on in its own test cluster only");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_ca(certs.path(), "other-ca");
    make_server_cert(certs.path(), "ca");
    let db = TestDb::new().await;
    let admin = db.client().await;
    let _ssl = enable_ssl(&admin, certs.path()).await;

    let ca = certs.path().join("ca.pem");
    let tls_url = with_options(
        &db.url,
        &format!("sslmode=require&sslrootcert={}", ca.display()),
    );
    // The reload is asynchronous: wait until the server offers TLS.
    let mut client = None;
    for _ in 0..100 {
        match artifactstore::db::connect(&tls_url).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let client = client.expect("a TLS connection once the cluster has reloaded");
    assert!(ssl_in_use(&client).await, "sslmode=require must encrypt");

    // The pool, too.
    let pool = artifactstore::db::pool(&tls_url, 2).unwrap();
    assert!(ssl_in_use(&pool.get().await.unwrap()).await);

    // Without sslmode=require, nothing changes: plaintext, even though the server offers TLS.
    assert!(!ssl_in_use(&db.client().await).await);

    // A certificate from another CA is refused.
    let other = with_options(
        &db.url,
        &format!(
            "sslmode=require&sslrootcert={}",
            certs.path().join("other-ca.pem").display()
        ),
    );
    let refused = refusal(&other).await;
    assert!(
        refused.contains("UnknownIssuer"),
        "a server certificate from an untrusted CA must be refused: {refused}"
    );

    // So is the right CA's certificate under a name it was not issued for (it names only
    // 127.0.0.1).
    let by_name = tls_url.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(by_name, tls_url, "the test cluster's URL names 127.0.0.1");
    let refused = refusal(&by_name).await;
    assert!(
        refused.contains("not valid for name"),
        "a certificate for another host name must be refused: {refused}"
    );

    // The whole server over TLS: migrations, the pool and the event listener.
    let server = Server::start(&db, &[("ARTIFACTSTORE_DATABASE_URL", &tls_url)]);
    let health = health(&server).await;
    assert_eq!(health["database"]["ok"], true, "{health}");
    let mut listening = health["events"]["listening"] == true;
    for _ in 0..100 {
        if listening {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        listening = self::health(&server).await["events"]["listening"] == true;
    }
    assert!(listening, "the event listener connects over TLS");
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.datname = $1 AND a.application_name = $2",
            &[
                &db.name,
                &artifactstore::events::bus::LISTENER_APPLICATION_NAME,
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        encrypted, 1,
        "the server's listener connection is encrypted"
    );
    drop(server);
}

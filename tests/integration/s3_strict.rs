//! The S3 backend against a second, stricter server: s3s-fs, in process. It validates
//! checksums and request shapes that Ceph RGW lets through, so client bugs Ceph hides show here.

use crate::storage_conformance::{Fixture, conformance_suite};
use artifactstore::storage::s3::{S3Settings, S3Store, SecretRef};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use std::sync::Arc;

const ACCESS: &str = "strict-access";
const SECRET: &str = "strict-secret-key-0123456789";

/// An s3s-fs server on a free loopback port, serving `root`, enforcing SigV4.
async fn spawn_s3s_fs(root: &std::path::Path) -> std::net::SocketAddr {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS, SECRET));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    addr
}

async fn strict_store(dir: &tempfile::TempDir, threshold: u64, sign: bool) -> Arc<S3Store> {
    let addr = spawn_s3s_fs(&dir.path().join("fs")).await;
    let (access, secret) = (dir.path().join("access"), dir.path().join("secret"));
    std::fs::write(&access, ACCESS).unwrap();
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let mut settings = S3Settings::for_tests("strict");
    settings.endpoint_url = Some(format!("http://{addr}"));
    settings.key_prefix = "blobs".into();
    settings.access_key_ref = SecretRef::File(access);
    settings.secret_key_ref = SecretRef::File(secret);
    settings.multipart_threshold_bytes = threshold;
    settings.multipart_chunk_bytes = 5 * 1024 * 1024;
    settings.sign_payload = Some(sign);
    let store = S3Store::open("strict", &settings).unwrap();
    store
        .client()
        .create_bucket()
        .bucket("strict")
        .send()
        .await
        .unwrap();
    Arc::new(store)
}

/// An s3s-fs server of its own in a temporary directory, and a store on it.
async fn strict_fixture(threshold: u64, sign: bool) -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("fs")).unwrap();
    let store = strict_store(&dir, threshold, sign).await;
    Some(Fixture {
        store,
        keep: Box::new(dir),
        after: None,
    })
}

/// Signed bodies, small blobs in one put.
async fn signed_single_put() -> Option<Fixture> {
    strict_fixture(16 * 1024 * 1024, true).await
}

/// Signed bodies, every blob through multipart staging.
async fn signed_multipart() -> Option<Fixture> {
    strict_fixture(0, true).await
}

/// Unsigned bodies (`sign_payload = false`, the default over https): one put.
async fn unsigned_single_put() -> Option<Fixture> {
    strict_fixture(16 * 1024 * 1024, false).await
}

/// Unsigned bodies, parts.
async fn unsigned_multipart() -> Option<Fixture> {
    strict_fixture(0, false).await
}

conformance_suite!(s3s_signed_single_put, signed_single_put);
conformance_suite!(s3s_signed_multipart, signed_multipart);
conformance_suite!(s3s_unsigned_single_put, unsigned_single_put);
conformance_suite!(s3s_unsigned_multipart, unsigned_multipart);

//! `verify-package`: checks a package offline, trusting nothing but a public key: the
//! attestation's signature, that the manifest is the one attested, and every file's bytes.

use crate::manifest::Manifest;
use crate::manifest::attestation;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `verify-package` options.
#[derive(Debug, clap::Args)]
pub struct VerifyPackageArgs {
    /// The package's files, under their relative paths (as `artifactstore pull` writes them).
    dir: PathBuf,
    /// The manifest: its canonical CBOR (`GET /packages/{id}/manifest`,
    /// `artifactstore manifest`).
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// The attestation: its DSSE envelope (`GET /packages/{id}/attestation`).
    #[arg(long, value_name = "FILE")]
    attestation: PathBuf,
    /// The public key you trust (PEM, as `GET /keys` lists it).
    #[arg(long, value_name = "PEM")]
    key: PathBuf,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

/// Exits 0 when the signature verifies, the manifest is the one attested and every file
/// matches it; 1 when anything does not (each named), or an input cannot be read.
pub fn verify_package(args: VerifyPackageArgs) -> anyhow::Result<ExitCode> {
    let read = |p: &Path| std::fs::read(p).with_context(|| p.display().to_string());
    let pem = String::from_utf8(read(&args.key)?).context("the key is not PEM text")?;
    let key = crate::signing::public_key_from_pem(&pem)?;
    let envelope = read(&args.attestation)?;
    let cbor = read(&args.manifest)?;
    let statement = match attestation::open(&envelope, |signed, sig| {
        crate::signing::verify(&key, signed, sig)
    }) {
        Ok(statement) => statement,
        Err(e) => return Ok(refuse(&format!("the attestation: {e}"))),
    };
    let manifest = match Manifest::from_cbor(&cbor) {
        Ok(manifest) => manifest,
        Err(e) => return Ok(refuse(&format!("the manifest: {e}"))),
    };
    let digest = Manifest::digest_of(&cbor);
    if statement["predicate"]["manifest"]["digest"] != digest.to_string() {
        return Ok(refuse(&format!(
            "the manifest ({digest}) is not the one the attestation names ({})",
            statement["predicate"]["manifest"]["digest"]
        )));
    }
    let expected: serde_json::Value =
        serde_json::from_slice(&attestation::statement(&manifest, &cbor)?)?;
    if statement != expected {
        return Ok(refuse(
            "the attestation's subjects or predicate differ from what the manifest says",
        ));
    }
    let total = manifest.files.iter().map(|f| f.size).sum();
    let bar = super::client::progress(total, args.quiet, "verifying");
    let mut problems = Vec::new();
    for file in &manifest.files {
        let path = args.dir.join(file.relative_path.as_str());
        match hash_file(&path, &bar) {
            Err(e) => problems.push(format!("{}: {e}", file.relative_path)),
            Ok(found) => {
                if found.size != file.size
                    || found.blake3.to_hex() != file.digests.blake3
                    || found.sha256.to_hex() != file.digests.sha256
                {
                    problems.push(format!(
                        "{}: its bytes differ from the manifest's ({} bytes, blake3:{})",
                        file.relative_path, found.size, found.blake3
                    ));
                }
            }
        }
    }
    bar.finish_and_clear();
    for problem in &problems {
        println!("{problem}");
    }
    if !problems.is_empty() {
        println!(
            "NOT verified: {} of {} files do not match",
            problems.len(),
            manifest.files.len()
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "verified: {} files ({}) match manifest {digest} of package {}, attested by key {}",
        manifest.files.len(),
        indicatif::HumanBytes(total),
        manifest.package.id,
        crate::signing::key_id(&key)
    );
    Ok(ExitCode::SUCCESS)
}

fn refuse(why: &str) -> ExitCode {
    println!("NOT verified: {why}");
    ExitCode::from(1)
}

/// BLAKE3 and SHA-256 of a file, in one pass.
fn hash_file(
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> std::io::Result<crate::identity::DualDigest> {
    crate::identity::DualHasher::digest_reader(std::fs::File::open(path)?, |n| bar.inc(n as u64))
}

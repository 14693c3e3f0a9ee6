//! A package's life from the terminal: `finalize`, `show`, `get`, `rm`, `hold`, `unhold`,
//! `retention set`.

use super::ClientArgs;
use super::api::{self, CliError, package_id};
use artifactstore_client::types;
use indicatif::HumanBytes;
use std::process::ExitCode;

/// A time as the terminal's local time, to the second.
fn local(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Writes to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn emit(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::other(format!("writing stdout: {e}")))
        }
        _ => Ok(()),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::other(e.to_string()))?;
    emit(&format!("{text}\n"))
}

/// A package as a few labelled lines, then (if it has them here) its files as a table.
fn print_package(p: &types::Package) -> Result<(), CliError> {
    emit(&package_text(p))
}

fn package_text(p: &types::Package) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    // (Writing to a String cannot fail.)
    macro_rules! println {
        () => { let _ = writeln!(text); };
        ($($arg:tt)*) => { let _ = writeln!(text, $($arg)*); };
    }
    println!("package     {}", p.id);
    println!("status      {}", p.status);
    println!("producer    {}", p.producer.as_str());
    println!("subject     {}", p.subject.as_str());
    println!("created     {}", local(&p.created_at));
    if let Some(at) = &p.finalized_at {
        println!("finalized   {}", local(at));
    }
    if let Some(digest) = &p.manifest_digest {
        println!("manifest    {digest}");
    }
    let retention = &p.retention;
    let expires = retention.expires_at.as_ref().map_or_else(
        || "no expiry".to_owned(),
        |t| format!("expires {}", local(t)),
    );
    println!("retention   {} ({expires})", retention.class);
    if retention.legal_hold {
        let why = retention
            .hold_reason
            .as_deref()
            .unwrap_or("no reason given");
        println!("legal hold  {why}");
    }
    if let Some(removal) = &p.removal {
        let why = removal.reason.as_deref().unwrap_or("no reason given");
        println!(
            "removed     {} by {}: {why}",
            local(&removal.at),
            removal.by
        );
    }
    println!(
        "files       {} ({})",
        p.file_count,
        HumanBytes(p.total_size)
    );
    if !p.files.is_empty() {
        println!();
        println!(
            "{:>10}  {:<24}  {:<16}  PATH",
            "SIZE", "MEDIA TYPE", "BLAKE3"
        );
        for f in &p.files {
            println!(
                "{:>10}  {:<24}  {:<16}  {}",
                HumanBytes(f.size).to_string(),
                f.media_type,
                &f.digests.blake3[..16.min(f.digests.blake3.len())],
                f.relative_path.as_str()
            );
        }
    }
    text
}

/// Prints a package as JSON or for people.
fn output(package: &types::Package, json: bool) -> Result<ExitCode, CliError> {
    if json {
        print_json(package)?;
    } else {
        print_package(package)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `show`, `finalize`, `unhold`: a package id and the output form.
#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Package id.
    package: String,
    /// Print the package as JSON.
    #[arg(long)]
    json: bool,
}

/// `show`: a package (open ones too) and its files.
pub async fn show(args: PackageArgs) -> Result<ExitCode, CliError> {
    let store = api::store(&args.client)?;
    let id = package_id(&args.package)?;
    let package = store.call(store.api().get_package().id(id).send()).await?;
    output(&package, args.json)
}

/// Provenance to attach at finalize (`finalize`, `push --finalize`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProvenanceArgs {
    /// A JSON file of the producer's provenance (an object: an SLSA provenance predicate, or
    /// any JSON), recorded in the manifest and the signed attestation.
    #[arg(long, value_name = "FILE")]
    provenance: Option<std::path::PathBuf>,
    /// The URI naming the provenance's format (default with `--provenance`: free JSON);
    /// `slsa` is short for `https://slsa.dev/provenance/v1`.
    #[arg(long, value_name = "URI", requires = "provenance")]
    provenance_type: Option<String>,
}

/// Largest provenance file read (the server's own bound is smaller, 64 KiB by default).
const MAX_PROVENANCE_FILE: u64 = 8 << 20;

impl ProvenanceArgs {
    /// The finalize request body, read and checked before anything is sent: a file that is not
    /// one JSON object (or repeats a member) is refused here.
    pub fn body(&self) -> Result<Option<types::FinalizePackage>, CliError> {
        let Some(path) = &self.provenance else {
            return Ok(None);
        };
        let usage =
            |what: String| CliError::usage(format!("--provenance {}: {what}", path.display()));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(|e| usage(e.to_string()))?,
                MAX_PROVENANCE_FILE + 1,
            ),
            &mut bytes,
        )
        .map_err(|e| usage(e.to_string()))?;
        if bytes.len() as u64 > MAX_PROVENANCE_FILE {
            return Err(usage(format!(
                "larger than {}",
                HumanBytes(MAX_PROVENANCE_FILE)
            )));
        }
        let value = crate::manifest::provenance::parse_strict_json(&bytes).map_err(usage)?;
        let serde_json::Value::Object(predicate) = value else {
            return Err(usage("not a JSON object".into()));
        };
        let kind = self.provenance_type.as_deref().map(|t| match t {
            "slsa" => crate::manifest::provenance::SLSA_PROVENANCE_V1,
            other => other,
        });
        // Every check the server makes but its size bound (a server setting): a push finds
        // out before it uploads anything.
        crate::manifest::SuppliedProvenance::new(
            kind.map(str::to_owned),
            serde_json::Value::Object(predicate.clone()),
            u64::MAX,
        )
        .map_err(|e| usage(e.to_string()))?;
        let predicate_type = kind
            .map(str::parse::<types::SuppliedProvenancePredicateType>)
            .transpose()
            .map_err(|e| CliError::usage(format!("--provenance-type: {e}")))?;
        Ok(Some(types::FinalizePackage {
            provenance: Some(types::SuppliedProvenance {
                predicate_type,
                predicate,
            }),
        }))
    }
}

/// `finalize` options.
#[derive(Debug, clap::Args)]
pub struct FinalizeArgs {
    #[command(flatten)]
    package: PackageArgs,
    #[command(flatten)]
    provenance: ProvenanceArgs,
}

/// `finalize`: makes a package immutable, with its manifest (and the producer's provenance).
pub async fn finalize(args: FinalizeArgs) -> Result<ExitCode, CliError> {
    let body = args.provenance.body()?;
    let args = args.package;
    let store = api::store(&args.client)?;
    let id = package_id(&args.package)?;
    let mut request = store.api().finalize_package().id(id);
    if let Some(body) = body {
        request = request.body(body);
    }
    let package = store.call(request.send()).await?;
    output(&package, args.json)
}

/// `unhold`: lifts a package's legal hold (admin token).
pub async fn unhold(args: PackageArgs) -> Result<ExitCode, CliError> {
    let store = api::store(&args.client)?;
    let id = package_id(&args.package)?;
    let package = store
        .call(store.api().release_legal_hold().id(id).send())
        .await?;
    output(&package, args.json)
}

/// `hold` options.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Package id.
    package: String,
    /// Why it is held (1-256 bytes).
    #[arg(long)]
    reason: String,
    /// Print the package as JSON.
    #[arg(long)]
    json: bool,
}

/// `hold`: puts a legal hold on a package (admin token).
pub async fn hold(args: HoldArgs) -> Result<ExitCode, CliError> {
    let store = api::store(&args.client)?;
    let id = package_id(&args.package)?;
    let reason = args
        .reason
        .parse::<types::LegalHoldRequestReason>()
        .map_err(|e| CliError::usage(format!("--reason: {e}")))?;
    let package = store
        .call(
            store
                .api()
                .set_legal_hold()
                .id(id)
                .body(types::LegalHoldRequest { reason })
                .send(),
        )
        .await?;
    output(&package, args.json)
}

/// `rm` options.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Package id.
    package: String,
    /// A file's path in the open package: only that file is removed.
    path: Option<String>,
    /// Why (kept with the package's record; not for a single file).
    #[arg(long)]
    reason: Option<String>,
    /// Remove the whole package without asking (needed when stdin is not a terminal).
    #[arg(long, short)]
    yes: bool,
    /// Print the package as JSON.
    #[arg(long)]
    json: bool,
}

/// `rm`: removes a file from an open package, or the package itself (an open one is
/// abandoned; a finalized one withdrawn, with an admin token).
pub async fn rm(args: RmArgs) -> Result<ExitCode, CliError> {
    let store = api::store(&args.client)?;
    let id = package_id(&args.package)?;
    if let Some(path) = &args.path {
        if args.reason.is_some() {
            return Err(CliError::usage(
                "--reason goes with removing a package, not one file".into(),
            ));
        }
        store
            .call(
                store
                    .api()
                    .delete_file()
                    .id(id)
                    .relative_path(path.as_str())
                    .send(),
            )
            .await?;
        eprintln!("removed {path} from {id}");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes && !confirmed(&format!("remove package {id} and all its files?"))? {
        return Err(CliError::usage(
            "not removed: confirm on a terminal, or pass --yes (a file is `rm <package> <path>`)"
                .into(),
        ));
    }
    let mut request = store.api().delete_package().id(id);
    if let Some(reason) = &args.reason {
        let reason = reason
            .parse::<types::DeletePackageReason>()
            .map_err(|e| CliError::usage(format!("--reason: {e}")))?;
        request = request.body(types::DeletePackage {
            reason: Some(reason),
        });
    }
    let package = store.call(request.send()).await?;
    output(&package, args.json)
}

/// Asks on the terminal; `false` when stdin is not one (a script must say `--yes`).
fn confirmed(question: &str) -> Result<bool, CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::other(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `get` options.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Package id.
    package: String,
    /// The file's path in the package.
    path: String,
    /// Where to write it (default: its name, in the current directory).
    #[arg(short, long)]
    output: Option<std::path::PathBuf>,
}

/// `get`: one file of a package, by its path, streamed to disk with both digests checked
/// (the destination is whole or absent).
pub async fn get(args: GetArgs) -> Result<ExitCode, CliError> {
    let store = api::store(&args.client)?;
    let id = package_id(&args.package)?;
    let package = store.call(store.api().get_package().id(id).send()).await?;
    let Some(file) = package.files.iter().find(|f| *f.relative_path == args.path) else {
        return Err(CliError {
            code: 3,
            message: format!("package {id} has no file at `{}`", args.path),
        });
    };
    let output = match args.output {
        Some(path) => path,
        None => {
            let name = args.path.rsplit('/').next().unwrap_or(&args.path);
            std::path::PathBuf::from(name)
        }
    };
    store.download(file.id, &output, None).await?;
    eprintln!(
        "{} ({}) -> {}",
        args.path,
        HumanBytes(file.size),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `retention` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Move a package to another retention class.
    Set(RetentionSetArgs),
}

/// `retention set` options.
#[derive(Debug, clap::Args)]
pub struct RetentionSetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Package id.
    package: String,
    /// The retention class.
    class: String,
    /// Allow shortening a finalized package's retention (admin token).
    #[arg(long)]
    force: bool,
    /// Print the package as JSON.
    #[arg(long)]
    json: bool,
}

/// `retention set`: moves a package to another class.
pub async fn retention(command: RetentionCommand) -> Result<ExitCode, CliError> {
    let RetentionCommand::Set(args) = command;
    let store = api::store(&args.client)?;
    let id = package_id(&args.package)?;
    let class = args
        .class
        .parse::<types::ChangeRetentionRetentionClass>()
        .map_err(|e| CliError::usage(format!("class: {e}")))?;
    let package = store
        .call(
            store
                .api()
                .change_retention()
                .id(id)
                .body(types::ChangeRetention {
                    retention_class: class,
                    force: Some(args.force),
                })
                .send(),
        )
        .await?;
    output(&package, args.json)
}

/// `quota` options.
#[derive(Debug, clap::Args)]
pub struct QuotaArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print the usage as JSON.
    #[arg(long)]
    json: bool,
}

/// `quota`: what the token's tenant holds, against its limits.
pub async fn quota(args: QuotaArgs) -> Result<ExitCode, CliError> {
    let store = api::store(&args.client)?;
    let usage = store.call(store.api().get_usage().send()).await?;
    if args.json {
        print_json(&usage)?;
        return Ok(ExitCode::SUCCESS);
    }
    let q = &usage.quota;
    let limit = |max: Option<i64>, human: bool| match max {
        None => "no limit".to_owned(),
        Some(n) if human => HumanBytes(n.max(0) as u64).to_string(),
        Some(n) => n.to_string(),
    };
    let text = format!(
        "tenant           {}\n\
         bytes            {} (+{} reserved by uploads) of {}\n\
         packages         {} of {}\n\
         upload sessions  {} of {}\n\
         stored once      {} ({} shared by several packages)\n",
        q.tenant,
        HumanBytes(q.used.bytes),
        HumanBytes(q.used.reserved_bytes),
        limit(q.max_bytes, true),
        q.used.packages,
        limit(q.max_packages, false),
        q.used.upload_sessions,
        limit(q.max_upload_sessions, false),
        HumanBytes(usage.physical_bytes),
        HumanBytes(usage.shared_bytes),
    );
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

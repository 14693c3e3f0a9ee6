//! Server-side storage commands: `verify` and `storage migrate`.

use crate::config::ServiceArgs;
use crate::registry::{VerifyOutcome, VerifyScope};
use crate::service::Service;
use std::process::ExitCode;

/// `verify` options.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub(super) service: ServiceArgs,
    /// Only copies on this backend.
    #[arg(long)]
    backend: Option<String>,
    /// Fraction of copies to check, chosen at random (0 < f <= 1).
    #[arg(long, default_value = "1")]
    sample: f64,
    /// Copies read at once.
    #[arg(long, default_value = "4")]
    concurrency: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Re-reads stored copies, recomputes their digests and records what it found. Exits 0 when
/// every copy checked is intact, 1 when some are damaged or missing, 2 when some could not be
/// read at all.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if !(args.sample > 0.0 && args.sample <= 1.0) {
        anyhow::bail!("--sample must be a fraction in (0, 1], got {}", args.sample);
    }
    let settings = args.service.resolve()?;
    let service = Service::start_existing(&settings).await?;
    let registry = &service.registry;
    if let Some(id) = &args.backend
        && registry.backends().get(id).is_none()
    {
        service.shutdown().await;
        anyhow::bail!("backend `{id}` is not configured (see ARTIFACTSTORE_STORAGE_FILE)");
    }
    let scope = VerifyScope {
        backend: args.backend.clone(),
        sample: args.sample,
    };
    let totals = registry.verify_totals(&scope).await?;
    let bar = crate::cli::client::progress(
        (totals.bytes as f64 * args.sample) as u64,
        args.quiet,
        "verifying",
    );
    let mut outcome = VerifyOutcome::default();
    let mut after = None;
    let result = loop {
        let page = match registry
            .locations_to_verify(&scope, after.as_ref(), 256)
            .await
        {
            Ok(page) => page,
            Err(e) => break Err(e),
        };
        let Some(last) = page.last().cloned() else {
            break Ok(());
        };
        match registry.verify_locations(&page, args.concurrency).await {
            Ok(found) => {
                bar.inc(found.bytes);
                outcome.add(&found);
                let bad = outcome.failed + outcome.missing + outcome.errors;
                if bad > 0 {
                    bar.set_message(format!("{bad} bad"));
                }
            }
            Err(e) => break Err(e),
        }
        after = Some(last);
    };
    bar.finish_and_clear();
    service.shutdown().await;
    result?;
    println!(
        "verified {} copies ({} bytes): {} ok, {} failed, {} missing, {} unreadable",
        outcome.ok + outcome.failed + outcome.missing,
        outcome.bytes,
        outcome.ok,
        outcome.failed,
        outcome.missing,
        outcome.errors
    );
    Ok(if outcome.errors > 0 {
        ExitCode::from(2)
    } else if outcome.failed + outcome.missing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `storage` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StorageCommand {
    /// Move stored copies from one backend to another (verified; resumable: run it again).
    Migrate(MigrateArgs),
}

/// `storage migrate` options.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub(super) service: ServiceArgs,
    /// Source backend id.
    #[arg(long)]
    from: String,
    /// Target backend id.
    #[arg(long)]
    to: String,
    /// Only the bytes of this package.
    #[arg(long, conflicts_with = "retention_class")]
    package: Option<uuid::Uuid>,
    /// Only the bytes of packages of this retention class.
    #[arg(long)]
    retention_class: Option<String>,
    /// Blobs moved at once.
    #[arg(long, default_value = "4")]
    concurrency: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub async fn storage(command: StorageCommand) -> anyhow::Result<ExitCode> {
    match command {
        StorageCommand::Migrate(args) => migrate(args).await,
    }
}

/// Exits 0 when every blob in scope moved, 1 when some source copies were damaged (recorded,
/// left in place).
async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    use crate::registry::{MigrateScope, Moved};
    use futures::StreamExt;
    let settings = args.service.resolve()?;
    let service = Service::start_existing(&settings).await?;
    let registry = &service.registry;
    let scope = MigrateScope {
        from: args.from.clone(),
        to: args.to.clone(),
        package: args.package.map(crate::domain::PackageId),
        retention_class: args.retention_class.clone(),
    };
    let result = async {
        let (_, bytes) = registry.migration_bytes(&scope).await?;
        let bar = crate::cli::client::progress(bytes, args.quiet, "moving");
        let (mut copied, mut already, mut damaged, mut collected) = (0u64, 0u64, 0u64, 0u64);
        let mut after = None;
        loop {
            let page = registry.migration_page(&scope, after.as_ref(), 256).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.blake3);
            let mut moves = futures::stream::iter(&page)
                .map(|item| async { (item.size, registry.migrate_blob(&scope, item).await) })
                .buffer_unordered(args.concurrency.max(1));
            while let Some((size, moved)) = moves.next().await {
                match moved? {
                    Moved::Copied => copied += 1,
                    Moved::AlreadyThere => already += 1,
                    Moved::SourceDamaged => damaged += 1,
                    Moved::Collected => collected += 1,
                }
                bar.inc(size);
            }
        }
        bar.finish_and_clear();
        println!(
            "moved {} blobs from `{}` to `{}` ({copied} copied, {already} already there); \
             {damaged} damaged source copies left in place{}",
            copied + already,
            scope.from,
            scope.to,
            if collected > 0 {
                format!("; {collected} garbage-collected before their move")
            } else {
                String::new()
            }
        );
        Ok::<_, crate::Error>(damaged)
    }
    .await;
    service.shutdown().await;
    Ok(if result? > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

//! The CLI's side of the Rust SDK: the client for `--server` / `--token`, and failures as exit
//! codes.

use super::ClientArgs;
use std::process::ExitCode;

/// A CLI failure with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// One line for the user.
    pub message: String,
}

impl CliError {
    /// Bad command-line usage (exit 2).
    pub fn usage(message: String) -> Self {
        CliError { code: 2, message }
    }
    /// Anything else (exit 1).
    pub fn other(message: String) -> Self {
        CliError { code: 1, message }
    }
    /// A digest did not match (exit 4).
    pub fn verification(message: String) -> Self {
        CliError { code: 4, message }
    }
    /// The exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The Rust SDK's client for `--server` / `--token`.
pub fn store(args: &ClientArgs) -> Result<artifactstore_client::Store, CliError> {
    let base = args.server.trim_end_matches('/');
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(CliError::usage(format!(
            "--server `{base}` must start with http:// or https://"
        )));
    }
    match &args.token {
        Some(token) => artifactstore_client::Store::new(base, token),
        None => artifactstore_client::Store::without_token(base),
    }
    .map_err(|e| CliError::usage(e.to_string()))
}

/// A package's canonical CBOR manifest, as the server sent it.
pub async fn manifest_bytes(
    store: &artifactstore_client::Store,
    id: &uuid::Uuid,
) -> Result<Vec<u8>, CliError> {
    use futures::TryStreamExt;
    store
        .call(store.api().get_manifest().id(*id).send())
        .await?
        .into_inner()
        .map_ok(|chunk| chunk.to_vec())
        .try_concat()
        .await
        .map_err(|e| CliError::other(format!("reading the manifest: {e}")))
}

impl From<artifactstore_client::StoreError> for CliError {
    /// Exit codes as for problems: 5 authentication or permission, 3 not found or gone, 2
    /// unreachable, 4 a digest that did not match, 1 anything else.
    fn from(e: artifactstore_client::StoreError) -> Self {
        use artifactstore_client::StoreError;
        let code = match &e {
            StoreError::Problem { status, .. } => match status {
                401 | 403 => 5,
                404 | 410 => 3,
                _ => 1,
            },
            StoreError::Unreachable(_) => 2,
            StoreError::DigestMismatch(_) => 4,
            StoreError::Transport(_) | StoreError::Io(_) | StoreError::Unexpected(_) => 1,
        };
        let message = match &e {
            StoreError::Problem { status: 401, .. } => format!(
                "{e} (give a token with --token or the ARTIFACTSTORE_TOKEN environment variable)"
            ),
            // Every artifact-store refusal is a problem document with a title.
            StoreError::Problem {
                status, problem, ..
            } if problem.title.is_empty() => format!(
                "the server answered {status} without a problem document (is --server / \
                 ARTIFACTSTORE_URL an artifactstore server?): {}",
                problem.detail.chars().take(200).collect::<String>()
            ),
            StoreError::Unreachable(t) => format!("cannot reach the server: {t}"),
            StoreError::Transport(t) => format!("the connection to the server failed: {t}"),
            other => other.to_string(),
        };
        CliError { code, message }
    }
}

/// A package id given on the command line (exit 2 when it is not a UUID).
pub fn package_id(text: &str) -> Result<uuid::Uuid, CliError> {
    text.parse()
        .map_err(|_| CliError::usage(format!("`{text}` is not a package id (a UUID)")))
}

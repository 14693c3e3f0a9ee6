//! Client commands over the HTTP API.

use std::process::ExitCode;

/// Where the server is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "ARTIFACTSTORE_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub server: String,
    /// Bearer token.
    #[arg(long, env = "ARTIFACTSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `health`: prints the server's health report; exit 0 when healthy, 1 when not, 2 when the
/// server cannot be reached.
pub async fn health(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/health", args.server.trim_end_matches('/'));
    let response = match reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach {url}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let healthy = response.status().is_success();
    let body: serde_json::Value = response.json().await?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

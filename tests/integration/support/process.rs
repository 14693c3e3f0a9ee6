//! Running the `artifactstore` binary's commands.

use std::process::Command;

/// Runs an `artifactstore` command against the database and data directory; its exit code and
/// output.
pub fn run(
    url: &str,
    data: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_artifactstore"));
    cmd.args(args)
        .env("ARTIFACTSTORE_DATABASE_URL", url)
        .env("ARTIFACTSTORE_DATA_DIR", data)
        .env("ARTIFACTSTORE_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), output_text(&out))
}

/// A finished command's stdout, then its stderr, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs an `artifactstore` client command against the server at `base` with `token`.
pub fn client_command(base: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_artifactstore"))
        .args(args)
        .env("ARTIFACTSTORE_URL", base)
        .env("ARTIFACTSTORE_TOKEN", token)
        .output()
        .unwrap()
}

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

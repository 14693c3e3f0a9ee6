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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! Secrets read from files, for every setting that takes one.

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 4096;

/// The contents of a secret file (a Docker or Kubernetes secret: links are followed), without
/// its trailing newlines; at most 4 KiB, never empty.
pub fn read_secret(file: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_SECRET_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "{} is over {MAX_SECRET_BYTES} bytes: not a secret",
            file.display()
        ));
    }
    // Editors end files with a newline; a secret never does.
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    Ok(text.to_owned())
}

//! Secrets read from files, for every setting that takes one.

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 4096;

/// The contents of a secret file (a Docker or Kubernetes secret: links are followed), without
/// its trailing newlines (`\n` and `\r`); at most 4 KiB of UTF-8, never empty. Only a regular
/// file is opened: a FIFO or device would block or never end.
pub fn read_secret(file: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", file.display());
    if !std::fs::metadata(file).map_err(unreadable)?.is_file() {
        return Err(format!("{} is not a regular file", file.display()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_SECRET_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "{} is over {MAX_SECRET_BYTES} bytes: not a secret",
            file.display()
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", file.display()))?;
    // Editors end files with a newline; a secret never does.
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_utf8_files_are_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "s3cret\r\n\n").unwrap();
        assert_eq!(read_secret(&file).unwrap(), "s3cret");
        // Too big is said as such, even when the cut falls inside a character.
        std::fs::write(&file, "é".repeat(3000)).unwrap();
        assert!(read_secret(&file).unwrap_err().contains("over 4096 bytes"));
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(read_secret(&file).unwrap_err().contains("not UTF-8"));
        // A directory and a FIFO are refused without blocking.
        assert!(
            read_secret(dir.path())
                .unwrap_err()
                .contains("not a regular file")
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(
            read_secret(&fifo)
                .unwrap_err()
                .contains("not a regular file")
        );
    }
}

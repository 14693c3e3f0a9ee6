//! Helpers shared by the benchmarks (`mod common;` in each bench).
#![allow(dead_code)] // each bench uses a subset

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs a command to completion (it must succeed) and returns how long it took.
pub fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// The fastest of `runs` measurements (the least disturbed on a shared machine).
pub fn best(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().expect("at least one run")
}

/// Throughput in MB/s (10^6 bytes per second).
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Writes `size` bytes of pseudo-random data (incompressible, deterministic) unless a file of
/// that size is already there.
pub fn make_file(path: &Path, size: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e3779b97f4a7c15u64;
    for _ in 0..size >> 20 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

/// A `/proc/<pid>/status` value in KiB: `VmRSS:` (now) or `VmHWM:` (peak).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

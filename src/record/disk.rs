//! Free disk space of the recordings directory, polled: below the configured threshold, active
//! recordings are stopped cleanly (files finalized, `failed` / `disk-full`) and new ones are
//! refused (507), so what was written so far is kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How often the free space is checked.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The watch on one directory's file system.
pub struct DiskGuard {
    dir: PathBuf,
    min_free: AtomicU64,
    free: AtomicU64,
    low: AtomicBool,
}

/// Bytes available to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

impl DiskGuard {
    /// A guard of `dir` that reports low space below `min_free` bytes.
    pub fn new(dir: &Path, min_free: u64) -> Self {
        let guard = Self {
            dir: dir.to_owned(),
            min_free: AtomicU64::new(min_free),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        };
        guard.refresh();
        guard
    }

    /// Measures again; returns whether space is low. A failed measurement keeps the last one.
    pub fn refresh(&self) -> bool {
        match free_bytes(&self.dir) {
            Ok(free) => {
                self.free.store(free, Ordering::Relaxed);
                let min = self.min_free.load(Ordering::Relaxed);
                let low = free < min;
                if low != self.low.swap(low, Ordering::Relaxed) {
                    if low {
                        tracing::error!(free, min, "disk space low");
                    } else {
                        tracing::info!(free, "disk space back above the threshold");
                    }
                }
                low
            }
            Err(e) => {
                tracing::warn!(error = %e, "free disk space unknown");
                self.is_low()
            }
        }
    }

    /// Whether space was low at the last measurement.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Changes the threshold (operators' tooling and tests); takes effect at the next check.
    pub fn set_min_free(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
    }

    /// Bytes free at the last measurement.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).unwrap();
        assert!(free > 0);
        assert!(!DiskGuard::new(&dir, 1).is_low());
        assert!(DiskGuard::new(&dir, u64::MAX).is_low());
    }
}

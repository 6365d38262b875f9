//! The host lock: one `up`, `down` or `rotate-secret` at a time.
//!
//! An flock on a file in the state directory. The kernel releases it when the
//! process dies, however it dies, so a crash never leaves a stale lock. The
//! holder writes its PID and command into the file so a waiting run can say
//! who it is waiting for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::fsutil::create_dirs;
use crate::settings::io_reason;

pub const LOCK_FILE: &str = ".evi-install.lock";

/// Held until dropped.
pub struct HostLock {
    _file: File,
}

impl HostLock {
    /// Waits up to `timeout` for the lock on `state_dir`, creating the
    /// directory (0755) and the lock file (0644) if needed.
    pub async fn acquire(state_dir: &Path, command: &str, timeout: Duration) -> Result<HostLock> {
        create_dirs(state_dir)?;
        let path = state_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| {
                anyhow!(
                    "cannot open the lock file {}: {}",
                    path.display(),
                    io_reason(&e)
                )
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: a valid open descriptor; flock does not touch memory.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                bail!("cannot lock {}: {}", path.display(), io_reason(&err));
            }
            if Instant::now() >= deadline {
                bail!(
                    "another evi-install holds the host lock ({}) and did not release it within {}s; \
                     wait for it to finish, or raise --lock-timeout",
                    holder(&mut file, &path),
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Who holds the lock is only information for a waiting run: failing to
        // record it (a full disk, say) must not stop this one.
        let _ = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "pid={} command={command}", std::process::id()));
        Ok(HostLock { _file: file })
    }
}

fn holder(file: &mut File, path: &Path) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
    let text = text.trim();
    if text.is_empty() {
        format!("lock file {}", path.display())
    } else {
        format!("{text}, lock file {}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_then_fails_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = HostLock::acquire(dir.path(), "up", Duration::from_secs(1))
            .await
            .unwrap();
        // flock locks belong to the open file description, so a second open conflicts even in-process.
        let err = HostLock::acquire(dir.path(), "down", Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid={} command=up", std::process::id())),
            "{text}"
        );
        drop(first);
        HostLock::acquire(dir.path(), "down", Duration::from_millis(200))
            .await
            .unwrap();
    }
}

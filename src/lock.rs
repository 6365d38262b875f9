//! The host lock: one `up`, `down` or `rotate-secret` at a time.
//!
//! An flock on a file in the state directory. The kernel releases it when the
//! process dies, however it dies, so a crash never leaves a stale lock. The
//! holder writes its PID and command into the file so a waiting run can say
//! who it is waiting for.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

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
        let mut file = open_lock_file(&path)?;
        let deadline = Instant::now() + timeout;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(Errno::WOULDBLOCK) => {}
                Err(e) => bail!(
                    "cannot lock {}: {}",
                    path.display(),
                    io_reason(&std::io::Error::from(e))
                ),
            }
            if Instant::now() >= deadline {
                bail!(
                    "another evi-install holds the host lock ({}) and did not release it within {}s; \
                     wait for it to finish, or raise --lock-timeout",
                    holder(&mut file, &path),
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(crate::timeouts::LOCK_RETRY).await;
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

/// Opens (or creates, 0644) the lock file without following a symbolic link
/// and without truncating it: only the holder of the lock rewrites it.
/// Anyone who could plant a link in the state directory could otherwise make
/// this root process write to a file of their choosing.
fn open_lock_file(path: &Path) -> Result<File> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644)).map_err(|e| {
        if e == Errno::LOOP {
            anyhow!(
                "the lock file {} is a symbolic link, which evi-install does not follow; \
                 remove it (`rm {}`) and run again",
                path.display(),
                path.display()
            )
        } else {
            anyhow!(
                "cannot open the lock file {}: {}",
                path.display(),
                io_reason(&std::io::Error::from(e))
            )
        }
    })?;
    let kind = rustix::fs::fstat(&fd)
        .map(|st| FileType::from_raw_mode(st.st_mode))
        .map_err(|e| anyhow!("cannot inspect the lock file {}: {e}", path.display()))?;
    if kind != FileType::RegularFile {
        bail!(
            "the lock file {} is not a regular file; remove it and run again",
            path.display()
        );
    }
    Ok(File::from(fd))
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

    #[tokio::test]
    async fn a_symlinked_lock_file_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&target, state.join(LOCK_FILE)).unwrap();
        let err = HostLock::acquire(&state, "up", Duration::from_millis(200))
            .await
            .err()
            .expect("a symlink is refused");
        let lock = state.join(LOCK_FILE);
        assert_eq!(
            err.to_string(),
            format!(
                "the lock file {} is a symbolic link, which evi-install does not follow; remove it (`rm {}`) and run again",
                lock.display(),
                lock.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    }

    #[tokio::test]
    async fn a_waiting_run_leaves_the_holders_record_intact() {
        let dir = tempfile::tempdir().unwrap();
        let _first = HostLock::acquire(dir.path(), "up", Duration::from_secs(1))
            .await
            .unwrap();
        let record = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(record.starts_with("pid="), "{record}");
        assert!(
            HostLock::acquire(dir.path(), "down", Duration::from_millis(150))
                .await
                .is_err()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            record
        );
    }

    #[test]
    fn the_lock_file_is_not_inherited_by_child_processes() {
        let dir = tempfile::tempdir().unwrap();
        let file = open_lock_file(&dir.path().join(LOCK_FILE)).unwrap();
        let flags = rustix::io::fcntl_getfd(&file).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
}

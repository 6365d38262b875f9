//! Writing files so that a crash or a full disk never leaves a half-written one.

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

use crate::settings::io_reason;

/// Writes `content` to `path` atomically: a temp file in the same directory,
/// fsync, chmod, rename, then fsync of the directory. Missing parent
/// directories are created 0755. On any error the old file stays as it was.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .context("the config path has no parent directory")?;
    create_dirs(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".valkey.conf.")
        .tempfile_in(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create a temporary file in {}: {}",
                dir.display(),
                io_reason(&e)
            )
        })?;
    let fail = |what: &str, e: std::io::Error| {
        anyhow::anyhow!("cannot {what} {}: {}", path.display(), io_reason(&e))
    };
    tmp.write_all(content).map_err(|e| fail("write", e))?;
    tmp.as_file().sync_all().map_err(|e| fail("sync", e))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| fail("set permissions on", e))?;
    tmp.persist(path).map_err(|e| fail("replace", e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync the directory of", e))?;
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0755.
pub fn create_dirs(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        anyhow::bail!(
            "{} exists but is not a directory; remove it or choose another --state-dir",
            dir.display()
        );
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create directory {}: {}",
                dir.display(),
                io_reason(&e)
            )
        })
}

/// Reads a file that may not exist yet.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read {}: {}",
            path.display(),
            io_reason(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_mode_and_creates_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/valkey.conf");
        write_atomic(&path, b"one\n", 0o644).unwrap();
        write_atomic(&path, b"two\n", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            fs::metadata(tmp.path().join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn a_file_in_the_way_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("state"), "").unwrap();
        let err =
            write_atomic(&tmp.path().join("state/valkey/valkey.conf"), b"x", 0o644).unwrap_err();
        assert!(
            err.to_string().contains("is not a directory")
                || err.to_string().contains("Not a directory"),
            "{err}"
        );
    }
}

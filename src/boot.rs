//! Coming back after a reboot.
//!
//! Podman 4.3 has no Quadlet; its `podman-restart.service` starts every
//! container whose restart policy is `always` at boot, which is what all of
//! ours have. Where systemd runs, `up` enables that unit (shown in the plan
//! like any other resource). Where it does not, nothing starts containers at
//! boot, and `up` says so once.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

/// Whether systemd is the init system here (its documented check).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `Some(enabled)` for `unit` where systemd runs, `None` elsewhere.
pub fn unit_enabled(unit: &str) -> Option<bool> {
    if !systemd_running() {
        return None;
    }
    let out = Command::new("systemctl")
        .args(["is-enabled", "--quiet", unit])
        .status()
        .ok()?;
    Some(out.success())
}

pub fn enable(unit: &str) -> Result<()> {
    let out = Command::new("systemctl").args(["enable", unit]).output()?;
    if !out.status.success() {
        bail!(
            "systemctl enable {unit}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The note `up` prints once where systemd does not run.
pub const NO_SYSTEMD_NOTE: &str =
    "note: systemd is not running on this host, so nothing starts the \
    containers after a reboot; their restart policy (always) restarts them while Podman runs. \
    After a reboot, run `evi-install up` (it starts what is stopped).";

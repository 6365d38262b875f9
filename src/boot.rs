//! Coming back after a reboot.
//!
//! Podman 4.3 has no Quadlet; its `podman-restart.service` starts every
//! container whose restart policy is `always` at boot, which is what all of
//! ours have. Where systemd runs, `up` enables that unit (shown in the plan
//! like any other resource). Where it does not, nothing starts containers at
//! boot, and `up` says so once.
//!
//! Rootless Podman's containers belong to the user's own systemd instance:
//! there the unit is the user's `podman-restart.service`, managed with
//! `systemctl --user`, and it runs at boot only if the user lingers
//! (`loginctl enable-linger`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

/// Whether Podman runs rootless here: evi-install talks to the Podman of the
/// user it runs as (see `engine::podman::resolve_url`).
fn rootless() -> bool {
    !rustix::process::geteuid().is_root()
}

/// Whether the systemd that manages our units runs: the system's (its
/// documented check), and for a rootless user also the user's own instance.
pub fn systemd_running() -> bool {
    let user_dir = user_manager_dir(
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        rustix::process::geteuid().as_raw(),
    );
    manager_running(rootless(), &|p| p.is_dir(), &user_dir)
}

fn manager_running(rootless: bool, is_dir: &dyn Fn(&Path) -> bool, user_dir: &Path) -> bool {
    is_dir(Path::new("/run/systemd/system")) && (!rootless || is_dir(user_dir))
}

/// Where a running user instance of systemd keeps its state.
fn user_manager_dir(runtime_dir: Option<PathBuf>, uid: u32) -> PathBuf {
    runtime_dir
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}")))
        .join("systemd")
}

/// `systemctl ARGS`, addressed to the user's instance for rootless Podman.
fn systemctl_args<'a>(rootless: bool, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = if rootless { vec!["--user"] } else { vec![] };
    all.extend_from_slice(args);
    all
}

fn systemctl(args: &[&str]) -> Command {
    let mut command = Command::new("systemctl");
    command.args(systemctl_args(rootless(), args));
    command
}

/// `Some(enabled)` for `unit` where systemd runs, `None` elsewhere.
pub fn unit_enabled(unit: &str) -> Option<bool> {
    if !systemd_running() {
        return None;
    }
    let out = systemctl(&["is-enabled", "--quiet", unit]).status().ok()?;
    Some(out.success())
}

pub fn enable(unit: &str) -> Result<()> {
    let args = systemctl_args(rootless(), &["enable", unit]).join(" ");
    let out = systemctl(&["enable", unit]).output()?;
    if !out.status.success() {
        bail!(
            "systemctl {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this (rootless) user lingers: logind then starts their systemd
/// instance at boot, and with it their `podman-restart.service`; otherwise
/// only their first login does (loginctl(1), `enable-linger`). Asked with
/// `loginctl show-user UID --property=Linger --value`, which fails for a
/// user who neither is logged in nor lingers. `None` where it cannot be asked.
pub fn lingers() -> Option<bool> {
    let uid = rustix::process::geteuid().as_raw().to_string();
    let out = Command::new("loginctl")
        .args(["show-user", &uid, "--property=Linger", "--value"])
        .output()
        .ok()?;
    Some(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "yes")
}

/// What starts the stack at boot, for `status`: `unit_enabled(BOOT_UNIT)`
/// as observed, whether Podman runs rootless, and if so whether the user
/// lingers.
pub fn describe(enabled: Option<bool>, rootless: bool, lingers: Option<bool>) -> String {
    let unit = crate::model::BOOT_UNIT;
    match (enabled, rootless) {
        (Some(true), false) => format!("{unit} enabled (it starts the containers at boot)"),
        (Some(true), true) if lingers == Some(true) => format!(
            "the user's {unit} enabled, and the user lingers (it starts the containers at boot)"
        ),
        (Some(true), true) => format!("the user's {unit} enabled, but {}", not_lingering("USER")),
        (Some(false), _) => format!(
            "{unit} not enabled: nothing restarts the stack after a reboot; `evi-install up` enables it"
        ),
        (None, _) => "nothing restarts the stack after a reboot (systemd is not running); \
            after a reboot, run `evi-install up`"
            .to_string(),
    }
}

/// `describe` for this host, as `status` shows it.
pub fn describe_here(enabled: Option<bool>) -> String {
    let lingers = if rootless() && enabled.is_some() {
        lingers()
    } else {
        None
    };
    describe(enabled, rootless(), lingers)
}

fn not_lingering(user: &str) -> String {
    format!(
        "the user does not linger: after a reboot nothing starts the stack until they log in; \
         `loginctl enable-linger {user}` (as root) makes systemd start it at boot"
    )
}

/// The note `up` prints for a rootless user who does not linger, where
/// systemd runs; `None` otherwise.
pub fn linger_note() -> Option<String> {
    (rootless() && systemd_running() && lingers() == Some(false)).then(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "USER".to_string());
        format!("note: rootless Podman: {}", not_lingering(&user))
    })
}

/// The note `up` prints once where systemd does not run.
pub const NO_SYSTEMD_NOTE: &str =
    "note: systemd is not running on this host, so nothing starts the \
    containers after a reboot; their restart policy (always) restarts them while Podman runs. \
    After a reboot, run `evi-install up` (it starts what is stopped).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_what_starts_the_stack_at_boot() {
        let cases = [
            (
                Some(true),
                false,
                "podman-restart.service enabled (it starts",
            ),
            (
                Some(true),
                true,
                "the user's podman-restart.service enabled, and the user lingers",
            ),
            (
                Some(false),
                false,
                "podman-restart.service not enabled: nothing restarts",
            ),
            (
                None,
                false,
                "nothing restarts the stack after a reboot (systemd is not running)",
            ),
            (
                None,
                true,
                "nothing restarts the stack after a reboot (systemd is not running)",
            ),
        ];
        for (enabled, rootless, expected) in cases {
            let line = describe(enabled, rootless, Some(true));
            assert!(
                line.starts_with(expected),
                "{enabled:?} rootless {rootless}: {line}"
            );
        }
    }

    #[test]
    fn a_rootless_user_who_does_not_linger_is_told_how_to_come_back_at_boot() {
        let line = describe(Some(true), true, Some(false));
        assert!(
            line.contains("does not linger") && line.contains("loginctl enable-linger"),
            "{line}"
        );
        // Root's containers do not depend on anyone's login.
        assert!(!describe(Some(true), false, Some(false)).contains("linger"));
    }

    #[test]
    fn rootless_podman_uses_the_users_systemd() {
        let unit = "podman-restart.service";
        assert_eq!(
            systemctl_args(false, &["enable", unit]),
            ["enable", unit],
            "root: the system instance"
        );
        assert_eq!(
            systemctl_args(true, &["is-enabled", "--quiet", unit]),
            ["--user", "is-enabled", "--quiet", unit]
        );
    }

    #[test]
    fn a_rootless_user_needs_its_own_systemd_instance() {
        let user = user_manager_dir(Some("/run/user/1000".into()), 1000);
        assert_eq!(user, Path::new("/run/user/1000/systemd"));
        assert_eq!(
            user_manager_dir(None, 1001),
            Path::new("/run/user/1001/systemd")
        );
        let system = Path::new("/run/systemd/system");
        // (rootless, which directories exist, expected)
        let cases: [(bool, &[&Path], bool); 5] = [
            (false, &[system], true),
            (false, &[], false),
            (true, &[system, &user], true),
            (true, &[system], false),
            (true, &[&user], false),
        ];
        for (rootless, present, expected) in cases {
            let is_dir = |p: &Path| present.contains(&p);
            assert_eq!(
                manager_running(rootless, &is_dir, &user),
                expected,
                "rootless {rootless}, present {present:?}"
            );
        }
    }
}

//! One module per command; `run` dispatches.

mod backup;
mod down;
mod export;
mod render;
mod restore;
mod rotate;
mod status;
mod up;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::settings::{self, Overrides, Settings};
use crate::ui::Ui;

/// Runs the command and returns its exit code.
pub fn run(cli: Cli) -> Result<u8> {
    let ui = Ui::new(cli.quiet, cli.verbose);
    let overrides = Overrides {
        config: cli.config.clone(),
        state_dir: cli.state_dir.clone(),
    };
    let settings = load_settings(&overrides, &ui)?;
    let ctx = Host {
        podman_url: cli.podman_url.clone(),
        lock_timeout: std::time::Duration::from_secs(cli.lock_timeout),
    };
    match cli.command {
        Command::Render(args) => render::run(&settings, &args, &ui),
        Command::Up(args) => runtime()?.block_on(up::run(&settings, &ctx, &args, &ui)),
        Command::Down(args) => runtime()?.block_on(down::run(&settings, &ctx, &args, &ui)),
        Command::Status(args) => runtime()?.block_on(status::run(&settings, &ctx, &args, &ui)),
        Command::RotateSecret(args) => {
            runtime()?.block_on(rotate::run(&settings, &ctx, &args, &ui))
        }
        Command::Export(target) => export::run(&settings, &target, &ui),
        Command::Backup(args) => runtime()?.block_on(backup::run(&settings, &ctx, &args, &ui)),
        Command::Restore(args) => runtime()?.block_on(restore::run(&settings, &ctx, &args, &ui)),
    }
}

/// What every command that touches the host needs besides the settings.
pub struct Host {
    pub podman_url: Option<String>,
    pub lock_timeout: std::time::Duration,
}

impl Host {
    /// Connects to Podman; every call on the engine is bounded in time.
    pub async fn connect(
        &self,
    ) -> Result<crate::engine::bounded::Bounded<crate::engine::podman::PodmanEngine>> {
        let url = crate::engine::podman::resolve_url(self.podman_url.as_deref());
        let engine = crate::engine::podman::PodmanEngine::connect(&url).await?;
        Ok(crate::engine::bounded::Bounded::new(engine))
    }

    /// Takes the host lock for `command` (see `lock.rs`). From then on, until
    /// the process ends, Ctrl-C and SIGTERM stop the run between actions
    /// rather than inside one (see `interrupt.rs`).
    pub async fn lock(&self, settings: &Settings, command: &str) -> Result<crate::lock::HostLock> {
        let lock =
            crate::lock::HostLock::acquire(&settings.state_dir, command, self.lock_timeout).await?;
        crate::interrupt::watch();
        Ok(lock)
    }
}

/// Observes everything evi-install manages: Podman resources and the config file.
async fn observe<E: crate::engine::Engine>(
    engine: &E,
    settings: &Settings,
) -> Result<crate::model::Observed> {
    use crate::model::{
        DATA_VOLUME, JOB_CONTAINER, PROBE_CONTAINER, STATE_ADDRESS_CONTAINER, STATE_CONTAINER,
    };
    // Every replica and successor of each client, also those the settings no
    // longer ask for (a scale-down removes them), and the leftovers of an
    // interrupted run (probes, backup and restore helpers), which `down` removes.
    let patterns: Vec<String> = crate::model::CLIENT_SERVICES
        .iter()
        .map(|(service, _)| format!("{service}*"))
        .chain([format!("{PROBE_CONTAINER}*")])
        .chain(crate::model::BACKUP_HELPERS.map(|p| format!("{p}*")))
        .collect();
    let mut names = vec![STATE_CONTAINER, STATE_ADDRESS_CONTAINER, JOB_CONTAINER];
    names.extend(patterns.iter().map(String::as_str));
    let mut observed = engine
        .observe(&settings.network, DATA_VOLUME, &names)
        .await?;
    // The prefixes match more than our names (`evi-bench`, `evi-be-01`): keep only
    // ours, so that someone else's container never enters a plan or its fingerprint.
    observed.containers.retain(|name, _| {
        name == STATE_CONTAINER
            || name == STATE_ADDRESS_CONTAINER
            || crate::model::replica_of(name).is_some()
            || crate::model::is_leftover(name)
    });
    observed.config = crate::fsutil::read_optional(&settings.config_path())?;
    // Host routes count as used subnets, except evi-net's own bridge route. Also
    // for a rootless Podman: its networks live in the user's network namespace,
    // but Podman 4.3 still refuses a subnet that a route of the host uses ("subnet
    // ... is already used on the host or by another config", seen rootless), so
    // the check here says so first, in one line, before anything changes.
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let own = observed
        .network
        .as_ref()
        .map(|n| n.subnets.clone())
        .unwrap_or_default();
    for (iface, net) in crate::addressing::parse_routes(&routes) {
        if !own.contains(&net) {
            let what = if iface.starts_with("podman") || iface.starts_with("cni-podman") {
                // Netavark and CNI name their bridges so. One can outlive its network
                // (a killed run), and Podman then refuses the subnet as well.
                format!(
                    "the host route on {iface} (a Podman bridge; if no Podman network uses it any more, \
                     `ip link delete {iface}` removes it)"
                )
            } else {
                format!("the host route on {iface}")
            };
            observed.other_subnets.push((what, net));
        }
    }
    observed.boot_unit_enabled = crate::boot::unit_enabled(crate::model::BOOT_UNIT);
    if observed
        .containers
        .get(STATE_CONTAINER)
        .is_some_and(|c| c.running)
    {
        observed.client_rules = client_rules(engine).await;
    }
    Ok(observed)
}

/// The clients' user's rules as the running evi-state describes them, or
/// `None` when they cannot be read (evi-state still loading, say): `up` then
/// sets them again, which changes nothing when they are right.
async fn client_rules<E: crate::engine::Engine>(engine: &E) -> Option<String> {
    let script = crate::acl::admin_script(crate::acl::USERS_SCRIPT);
    let out = engine
        .exec(crate::model::STATE_CONTAINER, &["sh", "-c", &script], &[])
        .await
        .ok()?;
    crate::acl::users_in(&out.stdout)
        .into_iter()
        .find(|u| u.name == crate::acl::CLIENT_USER)
        .map(|u| u.rules)
}

fn load_settings(overrides: &Overrides, ui: &Ui) -> Result<Settings> {
    let settings = settings::load(overrides)?;
    if let Some(path) = &settings.source {
        warn_if_world_writable(path, ui);
    }
    Ok(settings)
}

/// Anyone who can write the settings file can choose the images that run here.
fn warn_if_world_writable(path: &std::path::Path, ui: &Ui) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o002 != 0 {
            ui.warn(&format!(
                "settings file {} is writable by every user; run `chmod o-w {}`",
                path.display(),
                path.display()
            ));
        }
    }
}

/// A single-threaded runtime: evi-install waits on a handful of requests at a
/// time, and one thread keeps start-up and memory small.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

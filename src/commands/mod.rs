//! One module per command; `run` dispatches.

mod backup;
mod down;
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
        successor_name, BACKEND_CONTAINER, DATA_VOLUME, JOB_CONTAINER, PROBE_CONTAINER,
        STATE_CONTAINER, WORKER_CONTAINER,
    };
    let (be_next, worker_next) = (
        successor_name(BACKEND_CONTAINER),
        successor_name(WORKER_CONTAINER),
    );
    // With the leftovers of an interrupted run, which `down` removes.
    let probes = format!("{PROBE_CONTAINER}*");
    let helpers = crate::model::BACKUP_HELPERS.map(|p| format!("{p}*"));
    let names = [
        STATE_CONTAINER,
        BACKEND_CONTAINER,
        WORKER_CONTAINER,
        &be_next,
        &worker_next,
        JOB_CONTAINER,
        &probes,
        &helpers[0],
        &helpers[1],
        &helpers[2],
    ];
    let mut observed = engine
        .observe(&settings.network, DATA_VOLUME, &names)
        .await?;
    observed.config = crate::fsutil::read_optional(&settings.config_path())?;
    // Host routes count as used subnets, except evi-net's own bridge route.
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let own = observed
        .network
        .as_ref()
        .map(|n| n.subnets.clone())
        .unwrap_or_default();
    for (iface, net) in crate::addressing::parse_routes(&routes) {
        if !own.contains(&net) {
            observed
                .other_subnets
                .push((format!("the host route on {iface}"), net));
        }
    }
    observed.boot_unit_enabled = crate::boot::unit_enabled(crate::model::BOOT_UNIT);
    Ok(observed)
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

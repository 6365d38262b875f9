//! The command line: clap types only. `main.rs` turns them into work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Provision the EVI state service (Valkey 8) on this host with Podman";

const LONG_ABOUT: &str = "\
Provision the EVI state service (Valkey 8) on this host with Podman.

evi-install renders valkey.conf, keeps the Valkey password in a Podman secret,
and runs evi-state, evi-be and evi-worker on the private network evi-net with
no port published to the host. `up` converges a fresh or existing host and is
safe to run again; `up --dry-run` shows the plan and changes nothing.

Settings come from, lowest precedence first: built-in defaults, the settings
file (--config, EVI_CONFIG, or ./evi.yaml), the environment, and flags.";

const MAIN_EXAMPLES: &str = "\
Examples:
  evi-install render                       Print the valkey.conf the settings produce
  evi-install --config evi.yaml up --dry-run   Review what `up` would change
  evi-install --config evi.yaml up         Converge this host

Exit codes: 0 success, 1 error, 2 changes pending (with --detailed-exitcode), 64 usage error.";

#[derive(Debug, Parser)]
#[command(name = "evi-install", version, about = ABOUT, long_about = LONG_ABOUT, after_help = MAIN_EXAMPLES)]
pub struct Cli {
    /// Settings file (YAML). Default: ./evi.yaml when it exists
    #[arg(
        long,
        global = true,
        env = "EVI_CONFIG",
        hide_env_values = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,

    /// Where evi-install keeps valkey.conf and its lock [default: /var/lib/evi; for an ordinary user, $XDG_STATE_HOME/evi or ~/.local/state/evi]
    #[arg(
        long,
        global = true,
        env = "EVI_STATE_DIR",
        hide_env_values = true,
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub state_dir: Option<PathBuf>,

    /// Podman API address, e.g. unix:///run/podman/podman.sock [default: the standard socket]
    #[arg(
        long,
        global = true,
        env = "CONTAINER_HOST",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub podman_url: Option<String>,

    /// Print only errors and the final result
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    /// Print more detail (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,

    /// Seconds to wait for another evi-install run to release the host lock
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value_t = 60,
        help_heading = "Global options"
    )]
    pub lock_timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the rendered valkey.conf without touching the host
    #[command(after_help = RENDER_EXAMPLES)]
    Render(RenderArgs),
    /// Make the host match the settings (or, with --dry-run, show the plan)
    #[command(after_help = UP_EXAMPLES)]
    Up(UpArgs),
    /// Stop and remove the containers and the network; keep data, secrets and config
    #[command(after_help = DOWN_EXAMPLES)]
    Down(DownArgs),
    /// Show each resource, whether it matches the settings, and evi-state's health
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Change the Valkey password with no refused client and no lost data
    #[command(name = "rotate-secret", after_help = ROTATE_EXAMPLES)]
    RotateSecret(RotateArgs),
    /// Write the same stack as manifests for another platform, without touching the host
    #[command(subcommand)]
    Export(ExportTarget),
    /// Write a verified archive of evi-state's data (or, with --verify, check one)
    #[command(after_help = BACKUP_EXAMPLES)]
    Backup(BackupArgs),
    /// Replace evi-state's data with an archive's, verified, rolled back on any mismatch
    #[command(after_help = RESTORE_EXAMPLES)]
    Restore(RestoreArgs),
}

#[derive(Debug, Subcommand)]
pub enum ExportTarget {
    /// Kubernetes manifests: evi-state, its Service and NetworkPolicy, evi-be and evi-worker
    #[command(after_help = EXPORT_KUBERNETES_EXAMPLES)]
    Kubernetes(KubernetesArgs),
}

const EXPORT_KUBERNETES_EXAMPLES: &str = "\
Examples:
  evi-install export kubernetes                      Print every manifest as one YAML stream
  evi-install export kubernetes --out k8s/           One file per resource, in apply order
  evi-install export kubernetes --namespace evi --with-secret secret.yaml
                                                     Also write a Secret with a new password (mode 0600)

The manifests reference the Secret `evi-state` (keys `password` and `valkey-url`)
and never hold the password; see the README, \"Running on Kubernetes\".";

#[derive(Debug, Args)]
pub struct KubernetesArgs {
    /// Directory to write one file per resource to (created if missing), or `-` for standard output
    #[arg(long, value_name = "DIR|-", default_value = "-")]
    pub out: PathBuf,

    /// Namespace of every resource [default: none, so `kubectl -n` decides]
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// Also write a Secret manifest with a newly generated password to FILE (mode 0600; never overwritten)
    #[arg(long, value_name = "FILE")]
    pub with_secret: Option<PathBuf>,

    /// Numeric user and group of the evi-state image's `valkey` user (the official image's is 999:999)
    #[arg(long, value_name = "UID:GID", default_value = "999:999")]
    pub valkey_user: String,
}

const BACKUP_EXAMPLES: &str = "\
Examples:
  evi-install backup                      Archive under STATE_DIR/backups/ (UTC timestamp name)
  evi-install backup --out evi.tar.zst    Archive to that file
  evi-install backup --keep 7             Then keep only the 7 newest default-named archives
  evi-install backup --verify FILE        Load FILE in a throwaway server and compare with its manifest

Exit codes: 0 written (or verified), 1 error (or, with --verify, not verified).";

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Write the archive to FILE [default: STATE_DIR/backups/evi-state-<UTC time>.tar.zst]
    #[arg(long, value_name = "FILE", conflicts_with = "verify")]
    pub out: Option<std::path::PathBuf>,

    /// After a backup, keep only the N newest default-named archives in STATE_DIR/backups
    #[arg(long, value_name = "N", conflicts_with = "verify")]
    pub keep: Option<usize>,

    /// Check an archive instead: load it into a throwaway server on no network and compare with its manifest
    #[arg(long, value_name = "FILE")]
    pub verify: Option<std::path::PathBuf>,
}

const RESTORE_EXAMPLES: &str = "\
Examples:
  evi-install restore FILE --dry-run      Show what would be replaced, change nothing
  evi-install restore FILE                Ask, then restore
  evi-install restore FILE --yes          Restore without asking (required without a terminal)";

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// An archive written by `evi-install backup`
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// Show the plan and the archive against the live data; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Seconds to wait for the restored evi-state to answer an authenticated PING
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub ready_timeout: u64,
}

const STATUS_EXAMPLES: &str = "\
Examples:
  evi-install status                  Resources, drift, memory, AOF and key counts
  evi-install status --output json    The same as JSON

Exit codes: 0 healthy and matching the settings, 1 degraded, drifted or unreachable.";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

const ROTATE_EXAMPLES: &str = "\
Examples:
  evi-install rotate-secret --dry-run   List the steps, change nothing
  evi-install rotate-secret             Move evi-state, evi-be and evi-worker to a new password

The running evi-state accepts both passwords while the clients move, then only
the new one. An interrupted rotation is completed by running it again.";

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// List the steps and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Seconds to wait for the re-created evi-state to answer an authenticated PING
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub ready_timeout: u64,
}

const DOWN_EXAMPLES: &str = "\
Examples:
  evi-install down --dry-run          Show what would be removed
  evi-install down                    Remove the containers and evi-net; keep the data
  evi-install down --purge --yes      Also delete the data volume, the secrets and valkey.conf";

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Show what would be removed and remove nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Also remove the data volume (all Valkey data), the password secrets and valkey.conf
    #[arg(long)]
    pub purge: bool,

    /// With --purge: do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

const RENDER_EXAMPLES: &str = "\
Examples:
  evi-install render                    Print the config for the current settings
  evi-install render --check            Exit 1 with a diff if the installed file differs";

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Compare with the installed file; exit 1 and print a unified diff when they differ
    #[arg(long)]
    pub check: bool,
}

const UP_EXAMPLES: &str = "\
Examples:
  evi-install up --dry-run                      Show the plan, change nothing
  evi-install up --dry-run --detailed-exitcode  Exit 2 when changes are pending
  evi-install up --dry-run --out plan.json      Save the plan for review
  evi-install up --plan plan.json               Apply exactly the reviewed plan
  evi-install up                                Converge the host";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Show what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Output format of the plan
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Exit 0 when nothing changes, 2 when changes are pending (or were applied), 1 on error
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// With --dry-run: save the plan to FILE, to apply later with --plan
    #[arg(long, value_name = "FILE", requires = "dry_run")]
    pub out: Option<PathBuf>,

    /// Apply a plan saved with --out; refused if the settings or the host changed since
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dry_run", "out"])]
    pub plan: Option<PathBuf>,

    /// Seconds to wait for evi-state to answer an authenticated PING
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub ready_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

//! The narrow interface between evi-install and a container engine.
//!
//! Everything above this line speaks in `model` types; only `podman.rs` knows
//! the libpod API. Tests of the apply logic can use `fake.rs` instead.

pub mod bounded;
#[cfg(test)]
pub mod fake;
mod libpod_json;
pub mod podman;

use anyhow::Result;

use std::net::Ipv4Addr;

use crate::model::{ContainerSpec, Labels, NetworkSpec, Observed};

/// Where a container is in its life, from Podman's state word: callers never
/// compare Podman's strings themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// `exited` or `stopped`, with the exit code of its last run.
    Exited {
        code: i64,
    },
    /// Created, paused, starting, ...: Podman's word for it.
    Other(String),
}

impl RunState {
    pub fn from_podman(word: &str, code: i64) -> RunState {
        match word {
            "running" => RunState::Running,
            "exited" | "stopped" => RunState::Exited { code },
            other => RunState::Other(other.to_string()),
        }
    }
}

/// What a command run inside a container printed, and how it exited.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// The operations `up` needs. Each does one request's worth of work and fails
/// with the engine's own message.
#[allow(async_fn_in_trait)]
pub trait Engine {
    /// The network (with its subnets), the subnets of every other network,
    /// the volume, our secrets and our containers, by name (a name ending in
    /// `*` stands for every name with that prefix).
    async fn observe(&self, network: &str, volume: &str, containers: &[&str]) -> Result<Observed>;
    /// Creates a secret holding exactly `value`'s bytes.
    async fn create_secret(&self, name: &str, labels: &Labels, value: &str) -> Result<()>;
    async fn remove_secret(&self, name: &str) -> Result<()>;
    async fn create_network(&self, name: &str, labels: &Labels, spec: &NetworkSpec) -> Result<()>;
    async fn remove_network(&self, name: &str) -> Result<()>;
    async fn remove_volume(&self, name: &str) -> Result<()>;
    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<()>;
    /// Creates (does not start) a container. Never publishes a port.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<()>;
    async fn start_container(&self, name: &str) -> Result<()>;
    async fn rename_container(&self, name: &str, new_name: &str) -> Result<()>;
    /// Stops (SIGTERM, then SIGKILL after `timeout` seconds); a stop by request
    /// also ends a restart loop. A container already stopped or gone is fine.
    async fn stop_container(&self, name: &str, timeout: u64) -> Result<()>;
    /// Stops (SIGTERM, then SIGKILL after `timeout` seconds) and removes.
    async fn remove_container(&self, name: &str, timeout: u64) -> Result<()>;
    /// Where a container is in its life; `None` if it does not exist.
    async fn container_state(&self, name: &str) -> Result<Option<RunState>>;
    /// The address a running container holds on `network`.
    async fn container_address(&self, name: &str, network: &str) -> Result<Option<Ipv4Addr>>;
    /// Returns once the container has exited (the caller bounds the wait).
    async fn wait_exited(&self, name: &str) -> Result<()>;
    /// Runs a command in a running container, with extra environment.
    async fn exec(
        &self,
        container: &str,
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ExecOutput>;
    /// The last `lines` lines of a container's log (stdout and stderr).
    async fn logs(&self, container: &str, lines: usize) -> Result<String>;
    /// Whether the image is in local storage.
    async fn image_exists(&self, image: &str) -> Result<bool>;
    /// Pulls the image from its registry.
    async fn pull_image(&self, image: &str) -> Result<()>;
    /// The host directory that holds a volume's files, if the volume exists.
    async fn volume_mountpoint(&self, name: &str) -> Result<Option<String>>;
    /// Sends a tar archive of `path` in a container (running or not) to
    /// `sink`, chunk by chunk, as Podman's archive endpoint produces it.
    async fn copy_out(&self, container: &str, path: &str, sink: Chunks) -> Result<()>;
    /// Extracts the tar archive read from `source` at directory `path` in a
    /// container (running or not; a volume mounted there receives the files).
    async fn copy_in(&self, container: &str, path: &str, source: ChunkSource) -> Result<()>;
}

/// A stream of bytes between evi-install and a container's files (tar).
pub type Chunks = tokio::sync::mpsc::Sender<Vec<u8>>;
pub type ChunkSource = tokio::sync::mpsc::Receiver<Vec<u8>>;

/// Whether a container name is one `observe` was asked for: `pattern` is a
/// name, or a prefix followed by `*`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn observed_names_are_exact_or_a_prefix() {
        assert!(name_matches("evi-rotate", "evi-rotate"));
        assert!(!name_matches("evi-rotate", "evi-rotate-2"));
        assert!(name_matches("evi-probe*", "evi-probe"));
        assert!(name_matches("evi-probe*", "evi-probe-be"));
        assert!(!name_matches("evi-probe*", "evi-prob"));
    }
}

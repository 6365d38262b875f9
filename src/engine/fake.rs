//! An in-memory engine for fast tests of the apply logic. It records every
//! call and keeps just enough state to be observed again afterwards; it is
//! never the only proof that provisioning works (the end-to-end tests are).

use std::sync::Mutex;

use anyhow::{bail, Result};

use super::{ChunkSource, Chunks, Engine, ExecOutput};
use crate::model::*;

#[derive(Default)]
pub struct FakeEngine {
    pub host: Mutex<Observed>,
    pub calls: Mutex<Vec<String>>,
    /// Stored secret values by name, to check what a container would see.
    pub secret_values: Mutex<Vec<(String, String)>>,
    /// The first call whose description starts with this fails (once).
    pub fail_on: Option<String>,
    pub failed: Mutex<bool>,
    /// Every spec a container was created from, in order.
    pub created: Mutex<Vec<ContainerSpec>>,
    /// The address each container holds, as `container_address` reports it.
    pub addresses: Mutex<std::collections::BTreeMap<String, std::net::Ipv4Addr>>,
    /// Every container removal with the stop timeout it was given.
    pub stop_timeouts: Mutex<Vec<(String, u64)>>,
    /// `exec` never answers, as in a wedged container or Podman service.
    pub exec_hangs: bool,
    /// Containers whose image has no shell: `exec` exits 127 there.
    pub no_shell: Vec<String>,
}

impl FakeEngine {
    fn record(&self, call: String) -> Result<()> {
        if let Some(prefix) = &self.fail_on {
            let mut failed = self.failed.lock().unwrap();
            if call.starts_with(prefix.as_str()) && !*failed {
                *failed = true;
                bail!("{call}: injected failure");
            }
        }
        self.calls.lock().unwrap().push(call);
        Ok(())
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Engine for FakeEngine {
    async fn observe(
        &self,
        _network: &str,
        _volume: &str,
        _containers: &[&str],
    ) -> Result<Observed> {
        Ok(self.host.lock().unwrap().clone())
    }

    async fn create_secret(&self, name: &str, labels: &Labels, value: &str) -> Result<()> {
        self.record(format!("create secret {name}"))?;
        self.secret_values
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
        let secret = ObservedResource {
            name: name.to_string(),
            labels: labels.clone(),
        };
        self.host.lock().unwrap().secrets.push(secret);
        Ok(())
    }

    async fn remove_secret(&self, name: &str) -> Result<()> {
        self.record(format!("remove secret {name}"))?;
        self.host.lock().unwrap().secrets.retain(|s| s.name != name);
        Ok(())
    }

    async fn create_network(&self, name: &str, labels: &Labels, spec: &NetworkSpec) -> Result<()> {
        self.record(format!("create network {name}"))?;
        self.host.lock().unwrap().network = Some(ObservedNetwork {
            name: name.to_string(),
            labels: labels.clone(),
            subnets: vec![spec.subnet],
        });
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        self.record(format!("remove network {name}"))?;
        self.host.lock().unwrap().network = None;
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        self.record(format!("remove volume {name}"))?;
        self.host.lock().unwrap().volume = None;
        Ok(())
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<()> {
        self.record(format!("create volume {name}"))?;
        self.host.lock().unwrap().volume = Some(ObservedResource {
            name: name.to_string(),
            labels: labels.clone(),
        });
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        self.record(format!("create container {}", spec.name))?;
        self.created.lock().unwrap().push(spec.clone());
        let c = ObservedContainer {
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            running: false,
            state: "created".into(),
            networks: Some(
                spec.network_of
                    .is_none()
                    .then(|| spec.network.clone())
                    .into_iter()
                    .collect(),
            ),
            started_at: None,
        };
        self.host
            .lock()
            .unwrap()
            .containers
            .insert(spec.name.clone(), c);
        Ok(())
    }

    async fn start_container(&self, name: &str) -> Result<()> {
        self.record(format!("start container {name}"))?;
        if let Some(c) = self.host.lock().unwrap().containers.get_mut(name) {
            // A job container (rotate-secret's) runs to completion at once.
            let job = c.labels.contains_key("io.evi-install.role");
            c.running = !job;
            c.state = if job { "exited" } else { "running" }.into();
        }
        Ok(())
    }

    async fn rename_container(&self, name: &str, new_name: &str) -> Result<()> {
        self.record(format!("rename container {name} {new_name}"))?;
        let mut host = self.host.lock().unwrap();
        if let Some(mut c) = host.containers.remove(name) {
            c.name = new_name.to_string();
            host.containers.insert(new_name.to_string(), c);
        }
        Ok(())
    }

    async fn remove_container(&self, name: &str, timeout: u64) -> Result<()> {
        self.record(format!("remove container {name}"))?;
        self.stop_timeouts
            .lock()
            .unwrap()
            .push((name.to_string(), timeout));
        self.host.lock().unwrap().containers.remove(name);
        Ok(())
    }

    async fn container_state(&self, name: &str) -> Result<Option<super::RunState>> {
        Ok(self
            .host
            .lock()
            .unwrap()
            .containers
            .get(name)
            .map(|c| super::RunState::from_podman(&c.state, 0)))
    }

    async fn container_address(
        &self,
        name: &str,
        _network: &str,
    ) -> Result<Option<std::net::Ipv4Addr>> {
        Ok(self.addresses.lock().unwrap().get(name).copied())
    }

    async fn wait_exited(&self, name: &str) -> Result<()> {
        self.record(format!("wait container {name}"))
    }

    async fn exec(
        &self,
        container: &str,
        command: &[&str],
        _env: &[(&str, &str)],
    ) -> Result<ExecOutput> {
        self.record(format!("exec {container} {}", command.join(" ")))?;
        if self.exec_hangs {
            std::future::pending::<()>().await;
        }
        if self.no_shell.iter().any(|c| c == container) {
            return Ok(ExecOutput {
                exit_code: 127,
                stdout: String::new(),
                stderr: "executable file `sh` not found in $PATH".into(),
            });
        }
        // The rotation helper's ACL script reports success with its own word.
        let answer = if command.get(3) == Some(&"acl-change") {
            "evi-acl-ok\n"
        } else {
            "PONG\n"
        };
        Ok(ExecOutput {
            exit_code: 0,
            stdout: answer.into(),
            stderr: String::new(),
        })
    }

    async fn logs(&self, container: &str, _lines: usize) -> Result<String> {
        Ok(format!("logs of {container}\n"))
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        Ok(!image.starts_with("missing"))
    }

    async fn pull_image(&self, image: &str) -> Result<()> {
        self.record(format!("pull image {image}"))?;
        bail!("pull image {image}: no registry")
    }

    async fn stop_container(&self, name: &str, timeout: u64) -> Result<()> {
        self.record(format!("stop container {name}"))?;
        self.stop_timeouts
            .lock()
            .unwrap()
            .push((name.to_string(), timeout));
        if let Some(c) = self.host.lock().unwrap().containers.get_mut(name) {
            c.running = false;
            c.state = "exited".into();
        }
        Ok(())
    }

    async fn volume_mountpoint(&self, name: &str) -> Result<Option<String>> {
        let host = self.host.lock().unwrap();
        Ok(host
            .volume
            .as_ref()
            .filter(|v| v.name == name)
            .map(|_| format!("/fake/volumes/{name}/_data")))
    }

    async fn copy_out(&self, container: &str, path: &str, _sink: Chunks) -> Result<()> {
        self.record(format!("copy out {container}:{path}"))
    }

    async fn copy_in(&self, container: &str, path: &str, mut source: ChunkSource) -> Result<()> {
        self.record(format!("copy in {container}:{path}"))?;
        while source.recv().await.is_some() {}
        Ok(())
    }
}

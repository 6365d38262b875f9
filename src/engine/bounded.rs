//! Every engine call with a bound: an `Engine` around any engine that gives
//! each call a time limit, so a Podman service that stops answering ends the
//! run with a message naming the call instead of hanging it (and making
//! `--ready-timeout` meaningless).
//!
//! The bounds are generous: they catch a service that hangs, not a slow one.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::{ChunkSource, Chunks, Engine, ExecOutput};
use std::net::Ipv4Addr;

use crate::model::{ContainerSpec, Labels, NetworkSpec, Observed};

pub use crate::timeouts::{COPY, EXEC, PULL, REMOVE_MARGIN, REMOVE_VOLUME, REQUEST};

pub struct Bounded<E> {
    inner: E,
}

impl<E: Engine> Bounded<E> {
    pub fn new(inner: E) -> Bounded<E> {
        Bounded { inner }
    }
}

/// Runs `call`, or fails naming it once `limit` has passed.
async fn bound<T>(
    limit: Duration,
    what: impl FnOnce() -> String,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!(
            "Podman did not answer `{}` within {}s; check the Podman service (podman system service) and run again",
            what(),
            limit.as_secs()
        )),
    }
}

impl<E: Engine> Engine for Bounded<E> {
    async fn observe(&self, network: &str, volume: &str, containers: &[&str]) -> Result<Observed> {
        bound(
            REQUEST,
            || "list the network, volume, secrets and containers".into(),
            self.inner.observe(network, volume, containers),
        )
        .await
    }

    async fn create_secret(&self, name: &str, labels: &Labels, value: &str) -> Result<()> {
        bound(
            REQUEST,
            || format!("create secret {name}"),
            self.inner.create_secret(name, labels, value),
        )
        .await
    }

    async fn remove_secret(&self, name: &str) -> Result<()> {
        bound(
            REQUEST,
            || format!("remove secret {name}"),
            self.inner.remove_secret(name),
        )
        .await
    }

    async fn create_network(&self, name: &str, labels: &Labels, spec: &NetworkSpec) -> Result<()> {
        bound(
            REQUEST,
            || format!("create network {name}"),
            self.inner.create_network(name, labels, spec),
        )
        .await
    }

    async fn container_address(&self, name: &str, network: &str) -> Result<Option<Ipv4Addr>> {
        bound(
            REQUEST,
            || format!("inspect container {name}"),
            self.inner.container_address(name, network),
        )
        .await
    }

    async fn stop_container(&self, name: &str, timeout: u64) -> Result<()> {
        bound(
            Duration::from_secs(timeout) + REMOVE_MARGIN,
            || format!("stop container {name}"),
            self.inner.stop_container(name, timeout),
        )
        .await
    }

    async fn wait_exited(&self, name: &str) -> Result<()> {
        // Callers bound the wait by what they run (a probe, the rotation
        // job); this only catches a service that never answers at all.
        bound(
            crate::timeouts::JOB_RUN + REQUEST,
            || format!("wait for container {name}"),
            self.inner.wait_exited(name),
        )
        .await
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        bound(
            REQUEST,
            || format!("remove network {name}"),
            self.inner.remove_network(name),
        )
        .await
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        bound(
            REMOVE_VOLUME,
            || format!("remove volume {name}"),
            self.inner.remove_volume(name),
        )
        .await
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<()> {
        bound(
            REQUEST,
            || format!("create volume {name}"),
            self.inner.create_volume(name, labels),
        )
        .await
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        bound(
            REQUEST,
            || format!("create container {}", spec.name),
            self.inner.create_container(spec),
        )
        .await
    }

    async fn start_container(&self, name: &str) -> Result<()> {
        bound(
            REQUEST,
            || format!("start container {name}"),
            self.inner.start_container(name),
        )
        .await
    }

    async fn rename_container(&self, name: &str, new_name: &str) -> Result<()> {
        bound(
            REQUEST,
            || format!("rename container {name} to {new_name}"),
            self.inner.rename_container(name, new_name),
        )
        .await
    }

    async fn remove_container(&self, name: &str, timeout: u64) -> Result<()> {
        bound(
            remove_container_bound(timeout),
            || format!("remove container {name}"),
            self.inner.remove_container(name, timeout),
        )
        .await
    }

    async fn container_state(&self, name: &str) -> Result<Option<super::RunState>> {
        bound(
            REQUEST,
            || format!("inspect container {name}"),
            self.inner.container_state(name),
        )
        .await
    }

    async fn exec(
        &self,
        container: &str,
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ExecOutput> {
        bound(
            EXEC,
            || {
                format!(
                    "run {} in {container}",
                    command.first().copied().unwrap_or_default()
                )
            },
            self.inner.exec(container, command, env),
        )
        .await
    }

    async fn logs(&self, container: &str, lines: usize) -> Result<String> {
        bound(
            REQUEST,
            || format!("read the logs of {container}"),
            self.inner.logs(container, lines),
        )
        .await
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        bound(
            REQUEST,
            || format!("look up image {image}"),
            self.inner.image_exists(image),
        )
        .await
    }

    async fn pull_image(&self, image: &str) -> Result<()> {
        bound(
            PULL,
            || format!("pull image {image}"),
            self.inner.pull_image(image),
        )
        .await
    }

    async fn volume_mountpoint(&self, name: &str) -> Result<Option<String>> {
        bound(
            REQUEST,
            || format!("inspect volume {name}"),
            self.inner.volume_mountpoint(name),
        )
        .await
    }

    async fn copy_out(&self, container: &str, path: &str, sink: Chunks) -> Result<()> {
        bound(
            COPY,
            || format!("copy {path} out of {container}"),
            self.inner.copy_out(container, path, sink),
        )
        .await
    }

    async fn copy_in(&self, container: &str, path: &str, source: ChunkSource) -> Result<()> {
        bound(
            COPY,
            || format!("copy files into {container}:{path}"),
            self.inner.copy_in(container, path, source),
        )
        .await
    }
}

/// A removal first stops the container, which may take its whole stop timeout.
pub fn remove_container_bound(stop_secs: u64) -> Duration {
    Duration::from_secs(stop_secs) + REMOVE_MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeEngine;

    /// An engine whose every call hangs, as a wedged Podman service does.
    struct Hangs;

    async fn hang<T>() -> Result<T> {
        std::future::pending().await
    }

    impl Engine for Hangs {
        async fn observe(&self, _: &str, _: &str, _: &[&str]) -> Result<Observed> {
            hang().await
        }
        async fn create_secret(&self, _: &str, _: &Labels, _: &str) -> Result<()> {
            hang().await
        }
        async fn remove_secret(&self, _: &str) -> Result<()> {
            hang().await
        }
        async fn create_network(&self, _: &str, _: &Labels, _: &NetworkSpec) -> Result<()> {
            hang().await
        }
        async fn container_address(&self, _: &str, _: &str) -> Result<Option<Ipv4Addr>> {
            hang().await
        }
        async fn wait_exited(&self, _: &str) -> Result<()> {
            hang().await
        }
        async fn stop_container(&self, _: &str, _: u64) -> Result<()> {
            hang().await
        }
        async fn remove_network(&self, _: &str) -> Result<()> {
            hang().await
        }
        async fn remove_volume(&self, _: &str) -> Result<()> {
            hang().await
        }
        async fn create_volume(&self, _: &str, _: &Labels) -> Result<()> {
            hang().await
        }
        async fn create_container(&self, _: &ContainerSpec) -> Result<()> {
            hang().await
        }
        async fn start_container(&self, _: &str) -> Result<()> {
            hang().await
        }
        async fn rename_container(&self, _: &str, _: &str) -> Result<()> {
            hang().await
        }
        async fn remove_container(&self, _: &str, _: u64) -> Result<()> {
            hang().await
        }
        async fn container_state(&self, _: &str) -> Result<Option<crate::engine::RunState>> {
            hang().await
        }
        async fn exec(&self, _: &str, _: &[&str], _: &[(&str, &str)]) -> Result<ExecOutput> {
            hang().await
        }
        async fn logs(&self, _: &str, _: usize) -> Result<String> {
            hang().await
        }
        async fn image_exists(&self, _: &str) -> Result<bool> {
            hang().await
        }
        async fn pull_image(&self, _: &str) -> Result<()> {
            hang().await
        }
        async fn volume_mountpoint(&self, _: &str) -> Result<Option<String>> {
            hang().await
        }
        async fn copy_out(&self, _: &str, _: &str, _: Chunks) -> Result<()> {
            hang().await
        }
        async fn copy_in(&self, _: &str, _: &str, _: ChunkSource) -> Result<()> {
            hang().await
        }
    }

    /// Runs `call` in paused time; returns its error and how long it took.
    async fn timed<T: std::fmt::Debug>(call: impl Future<Output = Result<T>>) -> (String, u64) {
        let started = tokio::time::Instant::now();
        let err = call.await.expect_err("a hung call ends in an error");
        (err.to_string(), started.elapsed().as_secs())
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_fails_after_its_bound_naming_the_call() {
        let engine = Bounded::new(Hangs);
        let (text, secs) = timed(engine.start_container("evi-state")).await;
        assert_eq!(
            text,
            "Podman did not answer `start container evi-state` within 30s; \
             check the Podman service (podman system service) and run again"
        );
        assert_eq!(secs, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_is_bounded() {
        let e = Bounded::new(Hangs);
        let spec = crate::desired::build(
            &crate::settings::from_yaml(None, None).unwrap(),
            "port 6379\n",
            crate::model::SecretVersion(1),
        )
        .containers
        .remove(0);
        let labels = Labels::new();
        let net = crate::addressing::network_spec("10.90.213.0/24".parse().unwrap());
        let cases: Vec<(String, u64, &str)> = vec![
            (timed(e.observe("n", "v", &[])).await, "list the network"),
            (
                timed(e.create_secret("s", &labels, "x")).await,
                "create secret s",
            ),
            (timed(e.remove_secret("s")).await, "remove secret s"),
            (
                timed(e.create_network("n", &labels, &net)).await,
                "create network n",
            ),
            (
                timed(e.container_address("c", "n")).await,
                "inspect container c",
            ),
            (timed(e.wait_exited("c")).await, "wait for container c"),
            (
                timed(e.stop_container("evi-state", 30)).await,
                "stop container evi-state",
            ),
            (timed(e.remove_network("n")).await, "remove network n"),
            (
                timed(e.create_volume("v", &labels)).await,
                "create volume v",
            ),
            (timed(e.remove_volume("v")).await, "remove volume v"),
            (
                timed(e.create_container(&spec)).await,
                "create container evi-state",
            ),
            (timed(e.start_container("c")).await, "start container c"),
            (
                timed(e.rename_container("a", "b")).await,
                "rename container a to b",
            ),
            (
                timed(e.remove_container("evi-state", 30)).await,
                "remove container evi-state",
            ),
            (timed(e.container_state("c")).await, "inspect container c"),
            (
                timed(e.exec("evi-state", &["sh", "-c", "x"], &[])).await,
                "run sh in evi-state",
            ),
            (timed(e.logs("c", 10)).await, "read the logs of c"),
            (timed(e.image_exists("i")).await, "look up image i"),
            (timed(e.pull_image("i")).await, "pull image i"),
            (timed(e.volume_mountpoint("v")).await, "inspect volume v"),
            (
                timed(e.copy_out("c", "/d", tokio::sync::mpsc::channel(1).0)).await,
                "copy /d out of c",
            ),
            (
                timed(e.copy_in("c", "/d", tokio::sync::mpsc::channel(1).1)).await,
                "copy files into c:/d",
            ),
        ]
        .into_iter()
        .map(|((text, secs), call)| (text, secs, call))
        .collect();
        for (text, secs, call) in cases {
            assert!(
                text.starts_with(&format!("Podman did not answer `{call}")),
                "{text}"
            );
            assert!(text.contains(&format!("within {secs}s;")), "{text}");
            let expected = match call {
                "remove volume v" => REMOVE_VOLUME.as_secs(),
                "pull image i" => PULL.as_secs(),
                // Its 30s stop timeout, then the removal.
                "remove container evi-state" | "stop container evi-state" => 60,
                "copy /d out of c" | "copy files into c:/d" => COPY.as_secs(),
                "wait for container c" => 90,
                _ => 30,
            };
            assert_eq!(secs, expected, "{call}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answering_engine_is_passed_through() {
        let engine = Bounded::new(FakeEngine::default());
        let net = crate::addressing::network_spec("10.90.213.0/24".parse().unwrap());
        engine
            .create_network("evi-net", &Labels::new(), &net)
            .await
            .unwrap();
        assert!(engine.image_exists("app").await.unwrap());
        let err = engine.pull_image("missing/app").await.unwrap_err();
        assert_eq!(err.to_string(), "pull image missing/app: no registry");
        assert_eq!(
            engine.inner.calls(),
            ["create network evi-net", "pull image missing/app"]
        );
    }
}

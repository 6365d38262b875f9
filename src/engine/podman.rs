//! `Engine` on the Podman REST API (libpod), through podman-api.
//!
//! Engine JSON is read here and turned into `model` types; nothing above this
//! module sees podman-api's types. Two requests bypass podman-api's typed
//! calls on purpose, through the same containers-api request client:
//! - secret creation, because podman-api JSON-encodes the value and the
//!   secret would hold the quotes (vv9k/podman-api-rs#176);
//! - container inspect, decoded by `libpod_json` because podman-api's typed
//!   model cannot read Podman 5's shapes of fields the tool never uses.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use containers_api::conn::{self, hyper, Headers, Payload, RequestClient, Transport};
use futures_util::StreamExt;
use podman_api::conn::TtyChunk;
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListOpts, ContainerLogsOpts,
    ContainerRestartPolicy, ExecCreateOpts, NetworkCreateOpts, VolumeCreateOpts,
};
use podman_api::{models, Podman};

use super::{ChunkSource, Chunks, Engine, ExecOutput};
use crate::model::*;

use crate::timeouts::CONNECT_TIMEOUT;

/// The Podman API version requested: Debian 12's Podman is 4.3.1.
const API_VERSION: &str = "4.0.0";
const API_VERSION_PARTS: (usize, usize, usize) = (4, 0, 0);

pub struct PodmanEngine {
    podman: Podman,
    raw: RequestClient<conn::Error>,
    url: String,
    /// What `/libpod/info` says of the host, read once, when first needed
    /// (never on the path of a no-op `up`).
    host: tokio::sync::OnceCell<HostInfo>,
}

/// The facts about the host that change what is created.
#[derive(Debug, Clone)]
struct HostInfo {
    /// `netavark` or `cni`.
    network_backend: String,
    /// Bind mounts need a label to be readable in a container.
    selinux: bool,
}

/// A bind mount's options. With SELinux enforcing labels, the host file must
/// be relabelled (`z`: shared, as the config is only ever read) or the
/// container cannot read it.
fn bind_options(read_only: bool, selinux: bool) -> Vec<String> {
    let mut options = vec!["rbind".to_string()];
    if read_only {
        options.insert(0, "ro".to_string());
    }
    if selinux {
        options.push("z".to_string());
    }
    options
}

/// The socket to use: `--podman-url` or `CONTAINER_HOST` (clap folds both into
/// `explicit`), else the standard socket for this user.
pub fn resolve_url(explicit: Option<&str>) -> String {
    if let Some(url) = explicit.filter(|u| !u.is_empty()) {
        return url.to_string();
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return "unix:///run/podman/podman.sock".to_string();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => format!("unix://{}/podman/podman.sock", PathBuf::from(dir).display()),
        None => format!("unix:///run/user/{}/podman/podman.sock", uid.as_raw()),
    }
}

/// The fix to print when nothing answers.
pub const START_SERVICE_HINT: &str = "start it with `systemctl enable --now podman.socket` \
    (rootless: `systemctl --user enable --now podman.socket`) or `podman system service --time=0 &`, \
    or point --podman-url (or CONTAINER_HOST) at a running one";

impl PodmanEngine {
    /// One exec: create, start with stdout and stderr attached, read to the
    /// end, then the exit code from its inspect.
    async fn exec_once(
        &self,
        container: &str,
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ExecOutput> {
        let what = || {
            format!(
                "run `{}` in {container}",
                command.first().copied().unwrap_or_default()
            )
        };
        let opts = ExecCreateOpts::builder()
            .command(command)
            .env(env.iter().copied())
            .attach_stdout(true)
            .attach_stderr(true)
            .build();
        let exec = self
            .podman
            .containers()
            .get(container)
            .create_exec(&opts)
            .await
            .map_err(|e| fault(&what(), e))?;
        let mut output = ExecOutput::default();
        if let Some(mut stream) = exec
            .start(&Default::default())
            .await
            .map_err(|e| fault(&what(), e))?
        {
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(TtyChunk::StdOut(b)) => output.stdout.push_str(&String::from_utf8_lossy(&b)),
                    Ok(TtyChunk::StdErr(b)) => output.stderr.push_str(&String::from_utf8_lossy(&b)),
                    Ok(TtyChunk::StdIn(_)) => {}
                    Err(e) => return Err(anyhow!("{}: {}", what(), flatten(&e))),
                }
            }
        }
        let info = exec.inspect().await.map_err(|e| fault(&what(), e))?;
        output.exit_code = info.get("ExitCode").and_then(|c| c.as_i64()).unwrap_or(-1);
        Ok(output)
    }

    /// Connects and checks that a Podman service answers.
    pub async fn connect(url: &str) -> Result<PodmanEngine> {
        let podman = Podman::new_versioned(url, API_VERSION_PARTS)
            .map_err(|e| anyhow!("invalid Podman URL `{url}`: {e}; use unix:///path/to/podman.sock or tcp://host:port"))?;
        let raw = raw_client(url)?;
        let engine = PodmanEngine {
            podman,
            raw,
            url: url.to_string(),
            host: tokio::sync::OnceCell::new(),
        };
        engine.ping().await?;
        Ok(engine)
    }

    async fn ping(&self) -> Result<()> {
        let url = &self.url;
        if let Some(path) = url.strip_prefix("unix://") {
            if !std::path::Path::new(path).exists() {
                bail!(
                    "no Podman service at {url} (the socket does not exist); {START_SERVICE_HINT}"
                );
            }
        }
        let ping = tokio::time::timeout(CONNECT_TIMEOUT, self.podman.ping())
            .await
            .map_err(|_| {
                anyhow!(
                    "the Podman service at {url} did not answer within {}s; {START_SERVICE_HINT}",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?;
        match ping {
            Ok(info) if !info.libpod_api_version.is_empty() => Ok(()),
            Ok(_) => bail!("{url} answered, but not as a Podman (libpod) API service; point --podman-url at Podman's socket"),
            Err(podman_api::Error::Fault { code, .. }) => {
                bail!("{url} answered HTTP {code} to a Podman ping: it is not a Podman API service; point --podman-url at Podman's socket")
            }
            Err(podman_api::Error::InvalidResponse(_)) => {
                bail!("{url} answered, but not as a Podman (libpod) API service; point --podman-url at Podman's socket")
            }
            Err(e) => bail!("cannot reach Podman at {url}: {}; {START_SERVICE_HINT}", flatten(&e)),
        }
    }

    async fn list_containers(&self, names: &[&str]) -> Result<HashMap<String, ObservedContainer>> {
        let list = self
            .podman
            .containers()
            .list(&ContainerListOpts::builder().all(true).build())
            .await
            .map_err(|e| fault("list containers", e))?;
        let mut found = HashMap::new();
        for c in list {
            let Some(name) = c.names.as_ref().and_then(|n| n.first()).cloned() else {
                continue;
            };
            if !names
                .iter()
                .any(|pattern| super::name_matches(pattern, &name))
            {
                continue;
            }
            let state = c.state.clone().unwrap_or_default();
            found.insert(
                name.clone(),
                ObservedContainer {
                    name,
                    image: c.image.clone().unwrap_or_default(),
                    labels: c.labels.clone().unwrap_or_default().into_iter().collect(),
                    running: state == "running",
                    state,
                    networks: c.networks.clone(),
                    started_at: c.started_at.filter(|t| *t > 0),
                },
            );
        }
        Ok(found)
    }

    /// Our network, and every other network's subnets (a new evi-net must
    /// not overlap them), from one listing.
    async fn networks(
        &self,
        name: &str,
    ) -> Result<(Option<ObservedNetwork>, Vec<(String, ipnet::Ipv4Net)>)> {
        let list = self
            .podman
            .networks()
            .list(&Default::default())
            .await
            .map_err(|e| fault("list networks", e))?;
        let mut ours = None;
        let mut others = Vec::new();
        for n in list {
            let subnets: Vec<ipnet::Ipv4Net> = n
                .subnets
                .iter()
                .flatten()
                .filter_map(|s| s.subnet.as_deref()?.parse().ok())
                .collect();
            let net_name = n.name.clone().unwrap_or_default();
            if net_name == name {
                ours = Some(ObservedNetwork {
                    name: net_name,
                    labels: n.labels.unwrap_or_default().into_iter().collect(),
                    subnets,
                });
            } else {
                others.extend(
                    subnets
                        .into_iter()
                        .map(|s| (format!("the Podman network `{net_name}`"), s)),
                );
            }
        }
        Ok((ours, others))
    }

    async fn host_info(&self) -> Result<&HostInfo> {
        self.host
            .get_or_try_init(|| async {
                let info: serde_json::Value = self
                    .raw
                    .get_json(format!("/v{API_VERSION}/libpod/info"))
                    .await
                    .map_err(|e| anyhow!("read Podman's info: {}", flatten(&e)))?;
                Ok::<_, anyhow::Error>(HostInfo {
                    network_backend: info["host"]["networkBackend"]
                        .as_str()
                        .unwrap_or("netavark")
                        .to_string(),
                    selinux: info["host"]["security"]["selinuxEnabled"]
                        .as_bool()
                        .unwrap_or(false),
                })
            })
            .await
    }

    async fn volume(&self, name: &str) -> Result<Option<ObservedResource>> {
        match self.podman.volumes().get(name).inspect().await {
            Ok(v) => Ok(Some(ObservedResource {
                name: name.to_string(),
                labels: v.labels.into_iter().collect(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(fault(&format!("inspect volume {name}"), e)),
        }
    }

    async fn secrets(&self) -> Result<Vec<ObservedResource>> {
        let list = self
            .podman
            .secrets()
            .list()
            .await
            .map_err(|e| fault("list secrets", e))?;
        let mut names: Vec<String> = list
            .into_iter()
            .filter_map(|s| s.spec.and_then(|spec| spec.name))
            .filter(|name| is_our_secret(name))
            .collect();
        names.sort();
        // Podman 4.3 leaves labels out of the secret list, so each of ours
        // (normally two) is inspected, concurrently.
        let inspections = names.iter().map(|name| async move {
            let info = self
                .podman
                .secrets()
                .get(name)
                .inspect()
                .await
                .map_err(|e| fault(&format!("inspect secret {name}"), e))?;
            let labels = info.spec.and_then(|spec| spec.labels).unwrap_or_default();
            Ok::<_, anyhow::Error>(ObservedResource {
                name: name.clone(),
                labels: labels.into_iter().collect(),
            })
        });
        futures_util::future::try_join_all(inspections).await
    }
}

impl Engine for PodmanEngine {
    async fn image_exists(&self, image: &str) -> Result<bool> {
        self.podman
            .images()
            .get(image)
            .exists()
            .await
            .map_err(|e| fault(&format!("look up image {image}"), e))
    }

    async fn pull_image(&self, image: &str) -> Result<()> {
        let opts = podman_api::opts::PullOpts::builder()
            .reference(image)
            .quiet(true)
            .build();
        let images = self.podman.images();
        let mut stream = images.pull(&opts);
        while let Some(report) = stream.next().await {
            let report = report.map_err(|e| fault(&format!("pull image {image}"), e))?;
            if let Some(error) = report.error {
                bail!("pull image {image}: {error}");
            }
        }
        Ok(())
    }

    async fn observe(&self, network: &str, volume: &str, containers: &[&str]) -> Result<Observed> {
        // One request per resource kind, all at once: observing is on the path
        // of every `up`, and a converged host should answer in milliseconds.
        let (containers, (network, other_subnets), volume, secrets) = tokio::try_join!(
            self.list_containers(containers),
            self.networks(network),
            self.volume(volume),
            self.secrets(),
        )?;
        Ok(Observed {
            config: None,
            network,
            other_subnets,
            volume,
            secrets,
            containers: containers.into_iter().collect(),
            ..Observed::default()
        })
    }

    async fn create_secret(&self, name: &str, labels: &Labels, value: &str) -> Result<()> {
        // The libpod endpoint stores the request body as it is; labels are a JSON map in the query.
        let labels_json = serde_json::to_string(labels)?;
        let query = url_encode_pairs(&[("name", name), ("labels", &labels_json)]);
        let endpoint = format!("/v{API_VERSION}/libpod/secrets/create?{query}");
        self.raw
            .post(&endpoint, Payload::Text(value.to_string()), Headers::none())
            .await
            .map_err(|e| anyhow!("create secret {name}: {}", flatten(&e)))?;
        Ok(())
    }

    async fn remove_secret(&self, name: &str) -> Result<()> {
        removed(
            self.podman.secrets().get(name).delete().await,
            &format!("remove secret {name}"),
        )
    }

    async fn create_network(&self, name: &str, labels: &Labels, spec: &NetworkSpec) -> Result<()> {
        // netavark hands out dynamic leases only from the range and accepts a
        // static address outside it, which keeps ours free. CNI's host-local
        // IPAM refuses a static address outside the range ("failed to allocate
        // all requested IPs"), so there the range is the whole subnet.
        let lease_range =
            (self.host_info().await?.network_backend != "cni").then(|| models::LeaseRange {
                start_ip: Some(spec.dynamic_range.0.to_string()),
                end_ip: Some(spec.dynamic_range.1.to_string()),
            });
        let opts = NetworkCreateOpts::builder()
            .name(name)
            .dns_enabled(true)
            .labels(labels.clone())
            .subnets([models::Subnet {
                subnet: Some(spec.subnet.to_string()),
                gateway: Some(spec.gateway.to_string()),
                lease_range,
            }])
            .build();
        self.podman
            .networks()
            .create(&opts)
            .await
            .map_err(|e| fault(&format!("create network {name}"), e))?;
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        removed(
            self.podman.networks().get(name).delete().await,
            &format!("remove network {name}"),
        )
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        removed(
            self.podman.volumes().get(name).delete().await,
            &format!("remove volume {name}"),
        )
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<()> {
        let opts = VolumeCreateOpts::builder()
            .name(name)
            .labels(labels.clone())
            .build();
        self.podman
            .volumes()
            .create(&opts)
            .await
            .map_err(|e| fault(&format!("create volume {name}"), e))?;
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        let mut b = ContainerCreateOpts::builder()
            .name(&spec.name)
            .image(&spec.image)
            .labels(spec.labels.clone())
            .restart_policy(match spec.restart.as_str() {
                "always" => ContainerRestartPolicy::Always,
                "on-failure" => ContainerRestartPolicy::OnFailure,
                _ => ContainerRestartPolicy::No,
            })
            .stop_timeout(spec.stop_timeout)
            // Never publish: not the image's EXPOSEd ports, not any port mapping.
            .publish_image_ports(false)
            .portmappings(Vec::<models::PortMapping>::new());
        b = match &spec.network_of {
            // Shares that container's network namespace and /etc/hosts.
            Some(other) => b.net_namespace(models::Namespace {
                nsmode: Some("container".to_string()),
                value: Some(other.clone()),
            }),
            // No network at all: the throwaway servers of backup and restore.
            None if spec.network.is_empty() => b.net_namespace(models::Namespace {
                nsmode: Some("none".to_string()),
                value: None,
            }),
            // Bridge mode named explicitly: a rootless Podman otherwise defaults to
            // slirp4netns and refuses a network with static addresses ("networks
            // and static ip/mac address can only be used with Bridge mode
            // networking", libpod's specgen validation); rootful it is the default.
            None => b
                .net_namespace(models::Namespace {
                    nsmode: Some("bridge".to_string()),
                    value: None,
                })
                .networks([(
                    spec.network.clone(),
                    models::PerNetworkOptions {
                        aliases: Some(spec.aliases.clone()),
                        interface_name: None,
                        static_ips: spec.addresses.first().map(|ip| vec![ip.to_string()]),
                        static_mac: spec
                            .addresses
                            .first()
                            .map(|ip| crate::addressing::mac_for(*ip)),
                    },
                )]),
        };
        if !spec.hosts.is_empty() {
            b = b.hosts_add(spec.hosts.clone());
        }
        if !spec.env.is_empty() {
            b = b.env(spec.env.clone());
        }
        if !spec.command.is_empty() {
            b = b.command(&spec.command);
        }
        if let Some(entrypoint) = &spec.entrypoint {
            b = b.entrypoint(entrypoint);
        }
        if let Some(user) = &spec.user {
            b = b.user(user);
        }
        let has_bind = spec.mounts.iter().any(|m| matches!(m, Mount::Bind { .. }));
        // Asked only when there is a bind mount to label.
        let selinux = has_bind && self.host_info().await?.selinux;
        let mut mounts = Vec::new();
        let mut volumes = Vec::new();
        for m in &spec.mounts {
            match m {
                Mount::Bind {
                    source,
                    target,
                    read_only,
                } => mounts.push(podman_api::models::ContainerMount {
                    destination: Some(target.clone()),
                    source: Some(source.display().to_string()),
                    _type: Some("bind".to_string()),
                    options: Some(bind_options(*read_only, selinux)),
                    uid_mappings: None,
                    gid_mappings: None,
                }),
                Mount::Volume { name, target } => volumes.push(models::NamedVolume {
                    dest: Some(target.clone()),
                    is_anonymous: None,
                    name: Some(name.clone()),
                    options: None,
                }),
            }
        }
        b = b.mounts(mounts).volumes(volumes);
        let mut file_secrets = Vec::new();
        let mut env_secrets = Vec::new();
        for s in &spec.secrets {
            match s {
                SecretUse::File {
                    secret,
                    target,
                    mode,
                } => file_secrets.push(models::Secret {
                    source: Some(secret.clone()),
                    target: Some(target.clone()),
                    uid: None,
                    gid: None,
                    // Always explicit: Podman 4.3 mounts the file with mode 0 when none is given.
                    mode: Some(*mode),
                }),
                SecretUse::Env { secret, var } => env_secrets.push((var.clone(), secret.clone())),
            }
        }
        if !file_secrets.is_empty() {
            b = b.secrets(file_secrets);
        }
        if !env_secrets.is_empty() {
            b = b.secret_env(env_secrets);
        }
        self.podman
            .containers()
            .create(&b.build())
            .await
            .map_err(|e| fault(&format!("create container {}", spec.name), e))?;
        Ok(())
    }

    async fn start_container(&self, name: &str) -> Result<()> {
        self.podman
            .containers()
            .get(name)
            .start(None)
            .await
            .map_err(|e| {
                let e = fault(&format!("start container {name}"), e);
                if e.to_string().contains("is already allocated to container ID") {
                    // A lease that outlived its container: only a fresh lease database
                    // (a reboot, or deleting it while nothing runs) frees the address.
                    return anyhow!(
                        "{e:#}; if that container no longer exists, its address lease outlived it: \
                         with no container running on this host, delete /run/containers/networks/ipam.db \
                         (a reboot clears it too) and run again"
                    );
                }
                e
            })
    }

    async fn rename_container(&self, name: &str, new_name: &str) -> Result<()> {
        self.podman
            .containers()
            .get(name)
            .rename(new_name)
            .await
            .map_err(|e| fault(&format!("rename container {name} to {new_name}"), e))
    }

    async fn stop_container(&self, name: &str, timeout: u64) -> Result<()> {
        let stop = podman_api::opts::ContainerStopOpts::builder()
            .ignore(true)
            .timeout(timeout as usize)
            .build();
        match self.podman.containers().get(name).stop(&stop).await {
            // 304: it was not running (Podman answers so despite `ignore`).
            Err(podman_api::Error::Fault { code, .. }) if code.as_u16() == 304 => Ok(()),
            other => removed(other, &format!("stop container {name}")),
        }
    }

    async fn remove_container(&self, name: &str, timeout: u64) -> Result<()> {
        // Stop first: a stop by request turns the restart policy off. Removing a
        // container that `restart=always` is bringing back (a crash loop) races with
        // the restart, and can leave its fixed address allocated in Podman's IPAM
        // to a container that no longer exists (seen on Podman 4.3). A failed stop
        // (already stopping, say) is left to the removal below to decide.
        let _ = self.stop_container(name, timeout).await;
        let container = self.podman.containers().get(name);
        let opts = ContainerDeleteOpts::builder()
            .force(true)
            .timeout(timeout as usize)
            .build();
        removed(
            container.delete(&opts).await,
            &format!("remove container {name}"),
        )
    }

    async fn container_state(&self, name: &str) -> Result<Option<super::RunState>> {
        // Decoded by libpod_json, not podman-api's typed inspect, which cannot
        // read Podman 5's shapes of fields the tool never uses.
        let endpoint = format!("/v{API_VERSION}/libpod/containers/{name}/json");
        match self.raw.get(&endpoint).await {
            Ok(response) => {
                let body = hyper::body::to_bytes(response.into_body())
                    .await
                    .map_err(|e| anyhow!("inspect container {name}: {e}"))?;
                let (word, code) = super::libpod_json::container_state(&body)
                    .with_context(|| format!("inspect container {name}"))?;
                Ok(Some(super::RunState::from_podman(&word, code)))
            }
            Err(conn::Error::Fault { code, .. }) if code.as_u16() == 404 => Ok(None),
            Err(e) => Err(anyhow!("inspect container {name}: {}", flatten(&e))),
        }
    }

    async fn container_address(&self, name: &str, network: &str) -> Result<Option<Ipv4Addr>> {
        match self.podman.containers().get(name).inspect().await {
            Ok(c) => Ok(c
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(network))
                .and_then(|n| n.ip_address)
                .and_then(|ip| ip.parse().ok())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(fault(&format!("inspect container {name}"), e)),
        }
    }

    async fn wait_exited(&self, name: &str) -> Result<()> {
        let opts = podman_api::opts::ContainerWaitOpts::builder()
            .conditions([models::ContainerStatus::Exited])
            // Podman polls the state at this interval (default 250 ms); a
            // probe or job is done in tens of milliseconds.
            .interval("20ms")
            .build();
        self.podman
            .containers()
            .get(name)
            .wait(&opts)
            .await
            .map_err(|e| fault(&format!("wait for container {name}"), e))
    }

    async fn exec(
        &self,
        container: &str,
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ExecOutput> {
        let output = self.exec_once(container, command, env).await?;
        if never_started(&output) {
            // runc could not start the process at all (seen on a loaded
            // host with Podman 5.4: `runc: exec failed: unable to start
            // container process: … connection reset by peer: OCI runtime
            // error`). Nothing ran, so running it once more is safe.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            return self.exec_once(container, command, env).await;
        }
        Ok(output)
    }

    async fn logs(&self, container: &str, lines: usize) -> Result<String> {
        let opts = ContainerLogsOpts::builder()
            .stdout(true)
            .stderr(true)
            .tail(lines.to_string())
            .build();
        let container = self.podman.containers().get(container);
        let mut stream = container.logs(&opts);
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk.map_err(|e| fault("read logs", e))? {
                TtyChunk::StdOut(b) | TtyChunk::StdErr(b) => {
                    text.push_str(&String::from_utf8_lossy(&b))
                }
                TtyChunk::StdIn(_) => {}
            }
        }
        Ok(text)
    }

    async fn volume_mountpoint(&self, name: &str) -> Result<Option<String>> {
        match self.podman.volumes().get(name).inspect().await {
            Ok(v) => Ok(Some(v.mountpoint)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(fault(&format!("inspect volume {name}"), e)),
        }
    }

    async fn copy_out(&self, container: &str, path: &str, sink: Chunks) -> Result<()> {
        let c = self.podman.containers().get(container);
        let stream = c.copy_from(path);
        futures_util::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| fault(&format!("copy {path} out of {container}"), e))?;
            if sink.send(chunk).await.is_err() {
                // The reader stopped (and reports why).
                break;
            }
        }
        Ok(())
    }

    async fn copy_in(&self, container: &str, path: &str, mut source: ChunkSource) -> Result<()> {
        let (mut tx, body) = hyper::Body::channel();
        let pump = async move {
            while let Some(chunk) = source.recv().await {
                if tx.send_data(chunk.into()).await.is_err() {
                    break;
                }
            }
            // Dropping `tx` ends the body.
        };
        let c = self.podman.containers().get(container);
        let (result, ()) = tokio::join!(c.copy_to(path, body), pump);
        result.map_err(|e| fault(&format!("copy files into {container}:{path}"), e))
    }
}

/// An exec whose process runc could not start: it failed with the runtime's
/// error and printed nothing of its own.
fn never_started(output: &ExecOutput) -> bool {
    output.exit_code != 0
        && output.stdout.is_empty()
        && output.stderr.contains("OCI runtime error")
        && output.stderr.contains("exec failed")
}

/// A request client on the same socket, for the calls podman-api gets wrong.
fn raw_client(url: &str) -> Result<RequestClient<conn::Error>> {
    let transport = if let Some(path) = url.strip_prefix("unix://") {
        Transport::Unix {
            client: hyper::Client::builder().build(conn::get_unix_connector()),
            path: PathBuf::from(path),
        }
    } else if let Some(host) = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let host = url::Url::parse(&format!("http://{host}")).context("invalid Podman URL")?;
        Transport::Tcp {
            client: hyper::Client::builder().build(conn::get_http_connector()),
            host,
        }
    } else {
        bail!("unsupported Podman URL `{url}`: use unix:///path/to/podman.sock or tcp://host:port");
    };
    Ok(RequestClient::new(transport, Box::new(validate)))
}

type ValidateFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<hyper::Response<hyper::Body>, conn::Error>>
            + Send
            + Sync,
    >,
>;

/// Turns a non-2xx answer into an error carrying Podman's own message.
fn validate(response: hyper::Response<hyper::Body>) -> ValidateFuture {
    Box::pin(async move {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = hyper::body::to_bytes(response.into_body()).await?;
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(conn::Error::Fault {
            code: status,
            message,
        })
    })
}

fn url_encode_pairs(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The result of a removal: a resource that is already gone counts as removed,
/// so a rerun after an interruption does not fail on what was done.
fn removed<T>(result: podman_api::Result<T>, action: &str) -> Result<()> {
    match result {
        Err(e) if !is_not_found(&e) => Err(fault(action, e)),
        _ => Ok(()),
    }
}

fn is_not_found(e: &podman_api::Error) -> bool {
    matches!(e, podman_api::Error::Fault { code, .. } if code.as_u16() == 404)
}

/// An error for `action`, with Podman's message and nothing else.
fn fault(action: &str, e: podman_api::Error) -> anyhow::Error {
    anyhow!("{action}: {}", flatten(&e))
}

/// Podman's message without podman-api's wrapping (`error 500 - ...`).
fn flatten(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.trim_end_matches(": ").to_string()
}

#[cfg(test)]
mod tests {
    use super::bind_options;

    #[test]
    fn only_an_exec_that_runc_could_not_start_is_run_again() {
        use super::{never_started, ExecOutput};
        let failed = ExecOutput {
            exit_code: 126,
            stdout: String::new(),
            stderr:
                "Error: runc: exec failed: unable to start container process: waiting for init \
                     preliminary setup: read init-p: connection reset by peer: OCI runtime error\n"
                    .into(),
        };
        assert!(never_started(&failed));
        // The command ran and failed on its own, or printed something: never again.
        let ran = ExecOutput {
            stdout: "partial".into(),
            ..failed.clone()
        };
        assert!(!never_started(&ran));
        let own = ExecOutput {
            exit_code: 1,
            stdout: String::new(),
            stderr: "NOAUTH Authentication required.\n".into(),
        };
        assert!(!never_started(&own));
    }

    #[test]
    fn bind_mounts_are_relabelled_only_where_selinux_is_enabled() {
        assert_eq!(bind_options(true, false), ["ro", "rbind"]);
        assert_eq!(bind_options(false, false), ["rbind"]);
        assert_eq!(bind_options(true, true), ["ro", "rbind", "z"]);
    }
}

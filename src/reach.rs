//! Proof from the client's side that evi-state can be used.
//!
//! Checking what was created is not enough: on a host whose network has no
//! DNS every resource can be in place while no client can find evi-state. So
//! `up`, `rotate-secret` and `status` run a probe that resolves the URL's host,
//! connects and asks for PING with the URL's password, then `ACL WHOAMI`.
//!
//! Where the client's image can run it (a shell and valkey-cli), the probe runs
//! inside the client itself (`podman exec`), with the `VALKEY_URL` the client
//! was given: the most direct proof, and far cheaper than a container. App
//! images often have neither, so otherwise the probe is a short-lived container
//! of evi-state's image set up as a client is (on evi-net with the hosts entry,
//! or inside the client's network namespace, which shares its `/etc/hosts`),
//! given the same `VALKEY_URL` secret.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::addressing::probe_address;
use crate::desired::owned_labels;
use crate::desired::state_host_entry;
use crate::engine::Engine;
use crate::model::*;
use crate::secret::redact;
use crate::settings::Settings;

/// Reads `VALKEY_URL` as a client library would (`redis://[user]:PW@HOST:PORT`),
/// then checks each layer in turn. The name is looked up as clients do it,
/// with getaddrinfo (`getent ahosts`): `getent hosts` asks for an IPv6
/// address first, which /etc/hosts does not have, and so waits on the
/// network's DNS (3 to 15 s through aardvark-dns 1.4) before it reads the
/// IPv4 entry. The password goes to valkey-cli through its
/// environment (`REDISCLI_AUTH`), never through arguments; what is printed is
/// valkey-cli's answer, which never contains it. Exit codes name the layer.
pub const PROBE_SCRIPT: &str = include_str!("../templates/container/client-probe.sh");

/// Where a client's attempt to use evi-state stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    NameResolution,
    Connection,
    Authentication,
    /// Authenticated, but as another Valkey user than its URL names.
    Identity,
    Other,
}

impl Layer {
    /// What to do about a failure at this layer.
    pub fn fix(self) -> &'static str {
        match self {
            Layer::NameResolution => {
                "the client's /etc/hosts has no entry for evi-state: run `evi-install up` to re-create it"
            }
            Layer::Connection => {
                "check that evi-state runs and the client is attached to the network (`podman inspect`), then run `evi-install up`"
            }
            Layer::Authentication => {
                "the client's VALKEY_URL holds a password evi-state does not accept: run `evi-install rotate-secret` to finish any interrupted rotation"
            }
            Layer::Identity => {
                "the client's VALKEY_URL authenticates as another Valkey user than it names: run `evi-install up`"
            }
            Layer::Other => "see `evi-install status` and evi-state's log (`podman logs evi-state`)",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::NameResolution => "name resolution",
            Layer::Connection => "connection",
            Layer::Authentication => "authentication",
            Layer::Identity => "identity (ACL WHOAMI)",
            Layer::Other => "probe",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reach {
    /// PONG with the URL's password.
    Ok,
    Failed {
        layer: Layer,
        detail: String,
    },
}

impl Reach {
    fn from_exit(code: i64, output: &str) -> Reach {
        let layer = match code {
            0 => return Reach::Ok,
            10 => Layer::NameResolution,
            11 => Layer::Connection,
            12 => Layer::Authentication,
            14 => Layer::Identity,
            _ => Layer::Other,
        };
        let detail = redact(output.trim());
        let detail = match detail.lines().last() {
            Some(line) => line.to_string(),
            None => format!("the probe exited with code {code}"),
        };
        Reach::Failed { layer, detail }
    }
}

/// How the probe joins the network.
pub enum Attach<'a> {
    /// On the network at this fixed address, with these hosts entries: a
    /// fresh client, as `up` and `rotate-secret` create them.
    Network {
        network: &'a str,
        address: Ipv4Addr,
        hosts: Vec<String>,
    },
    /// Inside this running client's network namespace: what it sees.
    Namespace(&'a str),
}

/// A probe container using `url_secret` as `VALKEY_URL`.
pub fn probe_spec(name: &str, image: &str, url_secret: &str, attach: Attach) -> ContainerSpec {
    let mut labels = owned_labels();
    labels.insert("io.evi-install.role".into(), "probe".into());
    let (network, addresses, hosts, network_of) = match attach {
        Attach::Network {
            network,
            address,
            hosts,
        } => (network.to_string(), vec![address], hosts, None),
        Attach::Namespace(client) => (String::new(), vec![], vec![], Some(client.to_string())),
    };
    ContainerSpec {
        name: name.to_string(),
        image: image.to_string(),
        command: vec!["sh".into(), "-c".into(), PROBE_SCRIPT.into()],
        entrypoint: Some(vec![]),
        user: None,
        mounts: vec![],
        secrets: vec![SecretUse::Env {
            secret: url_secret.to_string(),
            var: URL_ENV.to_string(),
        }],
        network,
        aliases: vec![],
        env: Default::default(),
        addresses,
        hosts,
        network_of,
        restart: "no".into(),
        stop_timeout: 1,
        config_hash: None,
        secret_version: None,
        labels,
    }
}

/// Runs a container to its end, bounded by `timeout`, and removes it:
/// its exit code and its output.
pub async fn run_once<E: Engine>(
    engine: &E,
    spec: &ContainerSpec,
    timeout: Duration,
) -> Result<(i64, String)> {
    engine.remove_container(&spec.name, 1).await?;
    engine.create_container(spec).await?;
    let result = async {
        engine.start_container(&spec.name).await?;
        tokio::time::timeout(timeout, engine.wait_exited(&spec.name))
            .await
            .map_err(|_| anyhow!("{} did not finish within {}s", spec.name, timeout.as_secs()))??;
        let code = match engine.container_state(&spec.name).await? {
            Some(crate::engine::RunState::Exited { code }) => code,
            Some(other) => return Err(anyhow!("{} has not exited: {other:?}", spec.name)),
            None => return Err(anyhow!("{} disappeared while it ran", spec.name)),
        };
        let logs = engine.logs(&spec.name, 20).await.unwrap_or_default();
        Ok((code, logs))
    }
    .await;
    engine.remove_container(&spec.name, 1).await?;
    result
}

pub use crate::timeouts::PROBE_TIMEOUT;

pub async fn probe<E: Engine>(engine: &E, spec: &ContainerSpec) -> Result<Reach> {
    let (code, output) = run_once(engine, spec, PROBE_TIMEOUT).await?;
    Ok(Reach::from_exit(code, &output))
}

/// What the probe exits with when the image it runs in cannot run it: 126 and
/// 127 from the runtime (no `sh`), 15 from the script (no valkey-cli).
const CANNOT_PROBE_HERE: [i64; 3] = [15, 126, 127];

/// The probe run inside the running `client` (an exec), with the client's own
/// environment: libpod adds a container's environment secrets to every exec
/// session's environment (`prepareProcessExec` in
/// libpod/oci_conmon_exec_common.go: "Add secret envs if they exist"), so the
/// script sees the very `VALKEY_URL` the client's process was given. `None`
/// when the client's image cannot run the probe or the exec cannot start (a
/// client that is not running): the caller then runs a probe container,
/// which also names the failing layer for a client that is down.
pub async fn probe_by_exec<E: Engine>(engine: &E, client: &str) -> Option<Reach> {
    let command = ["sh", "-c", PROBE_SCRIPT];
    match tokio::time::timeout(PROBE_TIMEOUT, engine.exec(client, &command, &[])).await {
        Err(_) => Some(Reach::Failed {
            layer: Layer::Other,
            detail: format!(
                "no answer within {}s from inside {client}",
                PROBE_TIMEOUT.as_secs()
            ),
        }),
        Ok(Err(_)) => None,
        Ok(Ok(out)) if CANNOT_PROBE_HERE.contains(&out.exit_code) => None,
        Ok(Ok(out)) => Some(Reach::from_exit(
            out.exit_code,
            &format!("{}{}", out.stdout, out.stderr),
        )),
    }
}

/// Where a proof of reach came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvenBy {
    /// From inside this running client, with its own `VALKEY_URL`.
    Client(String),
    /// A new probe container on the network, as a fresh client.
    NewClient,
}

impl ProvenBy {
    /// Who got PONG, for `up` and `rotate-secret`'s last line.
    pub fn who(&self, network: &str) -> String {
        match self {
            ProvenBy::Client(name) => format!("{name} (from inside it)"),
            ProvenBy::NewClient => format!("a new client on {network}"),
        }
    }
}

/// The probe `up` and `rotate-secret` end on: a new client on evi-net, with
/// the hosts entry and the `VALKEY_URL` of password generation `version`.
pub fn fresh_client_probe(settings: &Settings, version: SecretVersion) -> ContainerSpec {
    let subnet = settings.network_subnet;
    probe_spec(
        PROBE_CONTAINER,
        &settings.services.evi_state.image,
        &version.url_name(),
        Attach::Network {
            network: &settings.network,
            address: probe_address(subnet),
            hosts: vec![state_host_entry(subnet)],
        },
    )
}

/// Fails unless a client with generation `version`'s URL gets PONG: `client`
/// (a running client just given that URL) from inside, where its image can
/// run the probe, else a new client on evi-net.
pub async fn require_reach<E: Engine>(
    engine: &E,
    settings: &Settings,
    version: SecretVersion,
    client: Option<&str>,
) -> Result<ProvenBy> {
    let inside = match client {
        Some(name) => probe_by_exec(engine, name)
            .await
            .map(|reach| (reach, ProvenBy::Client(name.to_string()))),
        None => None,
    };
    let (reach, by) = match inside {
        Some(proof) => proof,
        None => (
            probe(engine, &fresh_client_probe(settings, version)).await?,
            ProvenBy::NewClient,
        ),
    };
    match reach {
        Reach::Ok => Ok(by),
        Reach::Failed { layer, detail } => Err(anyhow!(
            "{} cannot use evi-state: {layer} failed ({detail}); {}",
            by.who(&settings.network),
            layer.fix()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_name_the_layer() {
        assert_eq!(Reach::from_exit(0, "PONG\n"), Reach::Ok);
        assert_eq!(
            Reach::from_exit(10, "evi-state does not resolve\n"),
            Reach::Failed {
                layer: Layer::NameResolution,
                detail: "evi-state does not resolve".into()
            }
        );
        assert_eq!(
            Reach::from_exit(
                11,
                "Could not connect to Valkey at evi-state:6379: Network is unreachable\n"
            ),
            Reach::Failed {
                layer: Layer::Connection,
                detail: "Could not connect to Valkey at evi-state:6379: Network is unreachable"
                    .into()
            }
        );
        assert!(matches!(
            Reach::from_exit(12, "AUTH failed: WRONGPASS invalid username-password pair"),
            Reach::Failed {
                layer: Layer::Authentication,
                ..
            }
        ));
        assert!(matches!(
            Reach::from_exit(137, ""),
            Reach::Failed { layer: Layer::Other, detail } if detail == "the probe exited with code 137"
        ));
    }

    #[test]
    fn the_probe_expands_the_password_only_in_builtins_and_the_environment() {
        let uses: Vec<&str> = PROBE_SCRIPT
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("pass=") || l.contains("$pass") || l.contains("url"))
            .collect();
        assert_eq!(
            uses,
            [
                "url=${VALKEY_URL:-}",
                "case \"$url\" in redis://*@*) ;; *) echo \"VALKEY_URL is missing or not a redis:// URL with a password\"; exit 13 ;; esac",
                "rest=${url#redis://}",
                "pass=${cred#*:}",
                "out=$(REDISCLI_AUTH=\"$pass\" valkey-cli --no-auth-warning -e -t 2 \"$@\" ping 2>&1)",
                "who=$(REDISCLI_AUTH=\"$pass\" valkey-cli --no-auth-warning -e -t 2 \"$@\" acl whoami 2>&1)",
            ]
        );
    }
}

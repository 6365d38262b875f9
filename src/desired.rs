//! Turns settings into the desired host state: names, mounts, secrets and the
//! hash labels that later reveal drift. Pure.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::addressing::{client_addresses, network_spec, replica_index, state_address};
use crate::model::*;
use crate::render::{effective_hash, hex};
use crate::settings::{Service, Settings};

/// evi-state's command: keeps the ACL file (users `default` and `evi-admin`,
/// hashes only) right, then drops to the image's `valkey` user and runs
/// valkey-server. See the script's own header for how each password is kept.
///
/// The container starts as root only to read the secrets, which are mounted
/// 0400 root: no process of the running server can read them again.
pub const STATE_START_SCRIPT: &str = include_str!("../templates/container/evi-state-start.sh");

/// The command of evi-state-addr, the container that holds evi-state's place
/// on evi-net: its fixed address, MAC address and alias. evi-state runs in its
/// network namespace, so when evi-state is re-created (a config change, each
/// step of a rotation) the address stays up, and a client that connects in
/// the meantime is refused at once and tries again in a moment. Without it the
/// address is gone for as long as the re-creation takes, the client's
/// connection attempt goes unanswered, and the kernel sends the next one only
/// after a second (TCP's initial retransmission timeout): a gap of 1.2 s seen
/// with ioredis and redis-py during `rotate-secret`.
///
/// It only waits: `sleep` in the background so that the shell, PID 1, answers
/// SIGTERM at once.
pub const ADDRESS_HOLDER_SCRIPT: &str =
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// The `/etc/hosts` entry that points a client at evi-state's fixed address.
pub fn state_host_entry(subnet: ipnet::Ipv4Net) -> String {
    format!("{STATE_CONTAINER}:{}", state_address(subnet))
}

/// Builds the desired state for these settings and this password generation.
pub fn build(settings: &Settings, conf: &str, version: SecretVersion) -> Desired {
    let config_path = settings.config_path();
    let holder = with_labels(ContainerSpec {
        name: STATE_ADDRESS_CONTAINER.to_string(),
        image: settings.services.evi_state.image.clone(),
        command: vec!["sh".into(), "-c".into(), ADDRESS_HOLDER_SCRIPT.into()],
        entrypoint: Some(vec![]),
        user: None,
        mounts: vec![],
        secrets: vec![],
        network: settings.network.clone(),
        // Clients find evi-state through the hosts entry; the alias serves a
        // network with DNS, as before.
        aliases: vec![STATE_CONTAINER.to_string()],
        env: BTreeMap::new(),
        addresses: vec![state_address(settings.network_subnet)],
        hosts: vec![],
        network_of: None,
        restart: "always".to_string(),
        stop_timeout: crate::timeouts::HELPER_STOP_SECS,
        config_hash: None,
        secret_version: None,
        labels: Labels::new(),
    });
    let state = with_labels(ContainerSpec {
        name: STATE_CONTAINER.to_string(),
        image: settings.services.evi_state.image.clone(),
        command: vec!["sh".into(), "-c".into(), STATE_START_SCRIPT.into()],
        entrypoint: Some(vec![]),
        // Root only until the start script has read the secret; see STATE_START_SCRIPT.
        user: None,
        mounts: vec![
            Mount::Bind {
                source: config_path.clone(),
                target: CONF_IN_CONTAINER.to_string(),
                read_only: true,
            },
            Mount::Volume {
                name: DATA_VOLUME.to_string(),
                target: "/data".to_string(),
            },
        ],
        // Root-only: the start script reads them before dropping to `valkey`.
        // The clients' password only seeds the ACL file on a first start; after
        // that the file holds what rotations made of it (see `field_hashes`).
        secrets: vec![
            SecretUse::File {
                secret: ADMIN_SECRET.to_string(),
                target: ADMIN_SECRET_TARGET.to_string(),
                mode: 0o400,
            },
            SecretUse::File {
                secret: version.password_name(),
                target: PASSWORD_SECRET_TARGET.to_string(),
                mode: 0o400,
            },
        ],
        // In evi-state-addr's network namespace: on evi-net through it.
        network: String::new(),
        aliases: vec![],
        // The rules of a first start only: `up` sets the settings' rules in
        // place (`Change::SetClientRules`), so they are not part of evi-state's
        // definition and a change never re-creates it.
        env: BTreeMap::from([(
            crate::acl::RULES_ENV.to_string(),
            crate::acl::DEFAULT_USER_RULES.to_string(),
        )]),
        addresses: vec![],
        hosts: vec![],
        network_of: Some(STATE_ADDRESS_CONTAINER.to_string()),
        restart: "always".to_string(),
        stop_timeout: crate::timeouts::STATE_STOP_SECS,
        // Only what a restart would pick up: the live directives are changed
        // in place (`live_config.rs`).
        config_hash: Some(effective_hash(&crate::live_config::restart_part(conf))),
        // Not tied to a generation: a rotation changes the passwords in
        // evi-state's ACL file at run time and never re-creates it.
        secret_version: None,
        labels: Labels::new(),
    });

    let mut containers = vec![holder, state];
    let mut unwanted = Vec::new();
    let mut replicas = Vec::new();
    for (name, slot) in CLIENT_SERVICES {
        let service = match name {
            BACKEND_CONTAINER => settings.services.evi_be.as_ref(),
            _ => settings.services.evi_worker.as_ref(),
        };
        match service {
            Some(service) => {
                // Each replica its own container and fixed addresses, all with the same
                // URL secret and hosts entry.
                for r in 1..=service.replicas {
                    let index = replica_index(slot, r);
                    let addresses = client_addresses(settings.network_subnet, index);
                    let replica = replica_name(name, r);
                    containers.push(client_spec(&replica, service, settings, addresses, version));
                }
            }
            None => unwanted.push(name.to_string()),
        }
        replicas.push((name.to_string(), service.map_or(0, |s| s.replicas)));
        // Left over if a rotation was killed between starting a successor and the swap.
        // (Those of replicas 2..N are found on the host by the planner.)
        unwanted.push(successor_name(name));
    }
    // Left over if a run was killed while its rotation helper or probe ran.
    unwanted.extend([JOB_CONTAINER.to_string(), PROBE_CONTAINER.to_string()]);

    Desired {
        config: ConfigFile {
            path: config_path,
            content: conf.to_string(),
        },
        secret_version: version,
        network: settings.network.clone(),
        network_spec: network_spec(settings.network_subnet),
        volume: DATA_VOLUME.to_string(),
        containers,
        unwanted_containers: unwanted,
        replicas,
        client_rules: crate::acl::client_rules(&settings.valkey.client_access),
    }
}

/// evi-be and evi-worker: the app image, `VALKEY_URL` from the env secret,
/// and the hosts entry through which they find evi-state.
fn client_spec(
    name: &str,
    service: &Service,
    settings: &Settings,
    addresses: [std::net::Ipv4Addr; 2],
    version: SecretVersion,
) -> ContainerSpec {
    with_labels(ContainerSpec {
        name: name.to_string(),
        image: service.image.clone(),
        command: service.command.clone(),
        entrypoint: None,
        user: None,
        mounts: vec![],
        secrets: vec![SecretUse::Env {
            secret: version.url_name(),
            var: URL_ENV.to_string(),
        }],
        network: settings.network.clone(),
        aliases: vec![name.to_string()],
        env: service.env.clone(),
        addresses: addresses.to_vec(),
        hosts: vec![state_host_entry(settings.network_subnet)],
        network_of: None,
        restart: "always".to_string(),
        stop_timeout: crate::timeouts::CLIENT_STOP_SECS,
        config_hash: None,
        secret_version: Some(version),
        labels: Labels::new(),
    })
}

/// The fields whose hashes go into the fields label, by name. Each is a part
/// of the spec an operator would recognise in a "replace because" line.
pub fn field_hashes(spec: &ContainerSpec) -> BTreeMap<String, String> {
    let hash = |v: serde_json::Value| short_hash(v.to_string().as_bytes());
    let mut fields = BTreeMap::from([
        ("image".to_string(), hash(serde_json::json!(spec.image))),
        (
            "command".to_string(),
            hash(serde_json::json!([spec.entrypoint, spec.command])),
        ),
        ("user".to_string(), hash(serde_json::json!(spec.user))),
        ("mounts".to_string(), hash(serde_json::json!(spec.mounts))),
        ("secrets".to_string(), hash(secrets_for_hash(spec))),
        (
            "network".to_string(),
            hash(serde_json::json!([
                spec.network,
                spec.aliases,
                spec.addresses,
                spec.network_of
            ])),
        ),
        ("hosts".to_string(), hash(serde_json::json!(spec.hosts))),
        (
            "restart".to_string(),
            hash(serde_json::json!([spec.restart, spec.stop_timeout])),
        ),
        (
            "config".to_string(),
            hash(serde_json::json!(spec.config_hash)),
        ),
    ]);
    // Only when set: containers made before `env` existed keep their hash.
    if !spec.env.is_empty() {
        fields.insert("env".to_string(), hash(serde_json::json!(spec.env)));
    }
    fields
}

/// The secrets as they count for drift. evi-state mounts the clients'
/// password only to seed its ACL file on a first start, so which generation
/// it mounts does not count: a rotation, which changes the passwords in the
/// ACL file at run time, never makes evi-state differ from the settings.
fn secrets_for_hash(spec: &ContainerSpec) -> serde_json::Value {
    if spec.name != STATE_CONTAINER {
        return serde_json::json!(spec.secrets);
    }
    let targets: Vec<String> = spec
        .secrets
        .iter()
        .map(|s| match s {
            SecretUse::File { target, mode, .. } => format!("{target}:{mode:o}"),
            SecretUse::Env { var, .. } => var.clone(),
        })
        .collect();
    serde_json::json!(targets)
}

fn short_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))[..12].to_string()
}

/// Adds the ownership, hash and fields labels.
fn with_labels(mut spec: ContainerSpec) -> ContainerSpec {
    let fields = field_hashes(&spec);
    let fields_json = serde_json::to_string(&fields).expect("a map of strings serializes");
    spec.labels = Labels::from([
        (MANAGED_LABEL.to_string(), "true".to_string()),
        (
            HASH_LABEL.to_string(),
            hex(&Sha256::digest(fields_json.as_bytes())),
        ),
        (FIELDS_LABEL.to_string(), fields_json),
    ]);
    if let Some(version) = spec.secret_version {
        // Which password generation the container was given: rotate-secret reads it.
        spec.labels
            .insert(SECRET_VERSION_LABEL.to_string(), version.0.to_string());
    }
    spec
}

/// Labels for secrets, networks and volumes.
pub fn owned_labels() -> Labels {
    Labels::from([(MANAGED_LABEL.to_string(), "true".to_string())])
}

pub fn secret_labels(version: SecretVersion, role: SecretRole) -> Labels {
    let mut labels = owned_labels();
    labels.insert(SECRET_VERSION_LABEL.to_string(), version.0.to_string());
    labels.insert(SECRET_ROLE_LABEL.to_string(), role.as_str().to_string());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::from_yaml;

    fn settings(yaml: &str) -> Settings {
        from_yaml(Some((std::path::Path::new("evi.yaml"), yaml)), None).unwrap()
    }

    #[test]
    fn clients_get_the_url_secret_and_a_missing_worker_is_unwanted() {
        let s = settings("services: { evi-be: { image: app }, evi-worker: { image: app } }");
        let d = build(&s, "port 6379\n", SecretVersion(3));
        assert_eq!(d.containers.len(), 4);
        for c in &d.containers[2..] {
            assert_eq!(
                c.secrets,
                vec![SecretUse::Env {
                    secret: "evi-valkey-url-v3".into(),
                    var: "VALKEY_URL".into()
                }]
            );
        }
        assert_eq!(
            d.unwanted_containers,
            ["evi-be-next", "evi-worker-next", "evi-rotate", "evi-probe"]
        );
        let d = build(
            &settings("services: { evi-be: { image: app } }"),
            "",
            SecretVersion(1),
        );
        assert_eq!(
            d.unwanted_containers,
            [
                "evi-be-next",
                "evi-worker",
                "evi-worker-next",
                "evi-rotate",
                "evi-probe"
            ]
        );
    }

    #[test]
    fn replicas_keep_the_services_name_and_addresses_and_interleave() {
        let s = settings(
            "services: { evi-be: { image: app, replicas: 2 }, evi-worker: { image: app, replicas: 3, env: { A: b } } }",
        );
        let d = build(&s, "port 6379\n", SecretVersion(1));
        let names: Vec<&str> = d.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "evi-state-addr",
                "evi-state",
                "evi-be",
                "evi-be-2",
                "evi-worker",
                "evi-worker-2",
                "evi-worker-3"
            ]
        );
        let first: Vec<String> = d.containers[2..]
            .iter()
            .map(|c| c.addresses[0].to_string())
            .collect();
        assert_eq!(
            first,
            [
                "10.90.213.10",
                "10.90.213.14",
                "10.90.213.12",
                "10.90.213.16",
                "10.90.213.20"
            ]
        );
        for c in &d.containers[2..] {
            assert_eq!(c.hosts, ["evi-state:10.90.213.2"]);
            assert_eq!(c.aliases, std::slice::from_ref(&c.name));
        }
        assert!(d.containers[2].env.is_empty());
        assert_eq!(d.containers[4].env["A"], "b");
        assert_eq!(
            d.replicas,
            [("evi-be".to_string(), 2), ("evi-worker".to_string(), 3)]
        );
        // One replica each is the stack as it always was: same names, addresses, hashes.
        let one = build(
            &settings("services: { evi-be: { image: app }, evi-worker: { image: app } }"),
            "port 6379\n",
            SecretVersion(1),
        );
        assert_eq!(one.containers[2].labels, d.containers[2].labels);
        assert_eq!(one.containers[3].addresses, d.containers[4].addresses);
        assert_ne!(
            one.containers[3].labels[HASH_LABEL], d.containers[4].labels[HASH_LABEL],
            "an env change replaces the worker"
        );
    }

    #[test]
    fn the_config_hash_changes_only_evi_state() {
        let s = settings("services: { evi-be: { image: app } }");
        let a = build(&s, "port 6379\nmaxmemory 1gb\n", SecretVersion(1));
        let b = build(&s, "port 6380\nmaxmemory 1gb\n", SecretVersion(1));
        assert_ne!(
            a.containers[1].labels[HASH_LABEL],
            b.containers[1].labels[HASH_LABEL]
        );
        for i in [0, 2] {
            assert_eq!(
                a.containers[i].labels[HASH_LABEL],
                b.containers[i].labels[HASH_LABEL]
            );
        }
        // Neither a comment nor a directive Valkey changes at run time counts.
        let c = build(
            &s,
            "# a new header\nport 6379\nmaxmemory 512mb\n",
            SecretVersion(1),
        );
        assert_eq!(
            a.containers[1].labels[HASH_LABEL],
            c.containers[1].labels[HASH_LABEL]
        );
    }

    #[test]
    fn a_new_secret_version_changes_every_container() {
        let s = settings("services: { evi-be: { image: app } }");
        let a = build(&s, "x 1\n", SecretVersion(1));
        let b = build(&s, "x 1\n", SecretVersion(2));
        for (x, y) in a.containers.iter().zip(&b.containers) {
            // The address holder has no password; evi-state's passwords
            // change at run time (its mounted one only seeds the ACL file).
            let same = x.name == STATE_ADDRESS_CONTAINER || x.name == STATE_CONTAINER;
            assert_eq!(
                x.labels[HASH_LABEL] == y.labels[HASH_LABEL],
                same,
                "{}",
                x.name
            );
        }
    }

    #[test]
    fn start_script_expands_passwords_only_in_builtins() {
        // `pw` is set by `read` and reaches sha256sum through a pipe from `printf`.
        let uses: Vec<&str> = STATE_START_SCRIPT
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && l.contains("$pw"))
            .collect();
        assert_eq!(
            uses,
            ["case \"$pw\" in", "h=$(printf '%s' \"$pw\" | sha256sum)"]
        );
        assert!(STATE_START_SCRIPT.contains(CONF_IN_CONTAINER));
        assert!(STATE_START_SCRIPT.contains(&format!("/run/secrets/{ADMIN_SECRET_TARGET}")));
        assert!(STATE_START_SCRIPT.contains(&format!("/run/secrets/{PASSWORD_SECRET_TARGET}")));
    }
}

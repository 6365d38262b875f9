//! Plain data: what the host should look like (`Desired`), what it looks like
//! (`Observed`), and the changes between them (`Plan`). No I/O here.
//!
//! Maps are `BTreeMap`s so every listing, hash and plan comes out in the same order.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use crate::addressing::NetworkSpec;

/// Every resource evi-install creates carries this label (value `true`);
/// a resource with one of our names but without it is never touched.
pub const MANAGED_LABEL: &str = "io.evi-install.managed";
/// Hash of everything that defines a container, to detect drift.
pub const HASH_LABEL: &str = "io.evi-install.config-hash";
/// Per-field hashes of a container's definition, to name what drifted.
pub const FIELDS_LABEL: &str = "io.evi-install.fields";
/// On secrets: which password generation they belong to.
pub const SECRET_VERSION_LABEL: &str = "io.evi-install.secret-version";
/// On secrets: `password` or `valkey-url`.
pub const SECRET_ROLE_LABEL: &str = "io.evi-install.secret-role";

pub const STATE_CONTAINER: &str = "evi-state";
/// Holds evi-state's fixed address, MAC address and network alias on evi-net;
/// evi-state runs in its network namespace. See `desired::ADDRESS_HOLDER_SCRIPT`.
pub const STATE_ADDRESS_CONTAINER: &str = "evi-state-addr";
pub const BACKEND_CONTAINER: &str = "evi-be";
pub const WORKER_CONTAINER: &str = "evi-worker";
pub const DATA_VOLUME: &str = "evi-state-data";

/// rotate-secret's short-lived job container.
pub const JOB_CONTAINER: &str = "evi-rotate";
/// The container that checks, as a client would, that evi-state answers.
pub const PROBE_CONTAINER: &str = "evi-probe";

/// The client services, each with its slot in the fixed address plan
/// (`addressing::replica_index`).
pub const CLIENT_SERVICES: [(&str, u32); 2] = [(BACKEND_CONTAINER, 0), (WORKER_CONTAINER, 1)];

/// Replica `r` (from 1) of a client service: replica 1 keeps the service's
/// own name, so a stack of one replica each is the stack it always was and
/// scaling 1 -> 3 only adds `evi-be-2` and `evi-be-3`.
pub fn replica_name(service: &str, replica: u32) -> String {
    if replica <= 1 {
        service.to_string()
    } else {
        format!("{service}-{replica}")
    }
}

/// The client service and replica number a container name stands for:
/// `evi-be` is replica 1, `evi-be-2` replica 2. `evi-be-1`, `evi-be-02` and
/// `evi-be-next` are not replica names.
pub fn replica_of(name: &str) -> Option<(&'static str, u32)> {
    CLIENT_SERVICES.iter().find_map(|(service, _)| {
        if name == *service {
            return Some((*service, 1));
        }
        let number = name.strip_prefix(service)?.strip_prefix('-')?;
        let r: u32 = number.parse().ok()?;
        (r >= 2 && number == r.to_string()).then_some((*service, r))
    })
}

/// The name a replacement client runs under until the old one is gone.
pub fn successor_name(name: &str) -> String {
    format!("{name}-next")
}

/// Containers that exist only during a run (a client's successor, the
/// rotation job, a probe): one found later is a leftover of an interrupted
/// run, and left on evi-net it would block its removal.
pub fn is_leftover(name: &str) -> bool {
    name.strip_suffix("-next")
        .is_some_and(|client| replica_of(client).is_some())
        || name == JOB_CONTAINER
        || name.starts_with(PROBE_CONTAINER)
        || BACKUP_HELPERS.iter().any(|p| name.starts_with(p))
}

/// The prefixes of the containers `backup` and `restore` run (throwaway
/// servers and the restore helper); one left by a killed run mounts the
/// data volume, so `down` removes it.
pub const BACKUP_HELPERS: [&str; 3] = ["evi-restore", "evi-backup-", "evi-verify-"];

/// Where evi-state finds its config and its password inside the container.
pub const CONF_IN_CONTAINER: &str = "/usr/local/etc/valkey/valkey.conf";
pub const PASSWORD_SECRET_TARGET: &str = "evi-state-password";
/// evi-install's own credential (Valkey user `evi-admin`): one secret, mounted
/// into evi-state only, never into a client. See `acl.rs`.
pub const ADMIN_SECRET: &str = "evi-admin-password";
pub const ADMIN_SECRET_TARGET: &str = "evi-admin-password";
/// The rotation's helper mounts the generation it moves to here.
pub const NEXT_PASSWORD_SECRET_TARGET: &str = "evi-state-password-next";
pub const URL_ENV: &str = "VALKEY_URL";
/// Podman's own unit that starts every container with restart policy
/// `always` at boot: on Podman 4.3 (no Quadlet) it is what brings the stack back.
pub const BOOT_UNIT: &str = "podman-restart.service";

pub type Labels = BTreeMap<String, String>;

/// The two secrets of one password generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretVersion(pub u32);

impl SecretVersion {
    /// Holds the bare password; mounted as a file into evi-state only.
    pub fn password_name(self) -> String {
        format!("evi-state-password-v{}", self.0)
    }
    /// Holds the whole `VALKEY_URL`; given to evi-be and evi-worker as an env secret.
    pub fn url_name(self) -> String {
        format!("evi-valkey-url-v{}", self.0)
    }
    pub fn next(self) -> SecretVersion {
        SecretVersion(self.0 + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretRole {
    Password,
    ValkeyUrl,
}

impl SecretRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretRole::Password => "password",
            SecretRole::ValkeyUrl => "valkey-url",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// A host file or directory.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// A named volume.
    Volume { name: String, target: String },
}

/// A secret as a container sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretUse {
    /// Mounted at `/run/secrets/<target>` with this file mode.
    File {
        secret: String,
        target: String,
        mode: u32,
    },
    /// Exposed as environment variable `var`.
    Env { secret: String, var: String },
}

/// Everything evi-install decides about one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Empty: the image's own command.
    pub command: Vec<String>,
    /// `Some(vec![])`: run `command` as it is, whatever ENTRYPOINT the image
    /// has (evi-state's image may be the official one, whose entrypoint
    /// would otherwise wrap our start script). `None`: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    pub mounts: Vec<Mount>,
    pub secrets: Vec<SecretUse>,
    pub network: String,
    pub aliases: Vec<String>,
    /// Environment variables from the settings (`services.<name>.env`); never
    /// `VALKEY_URL`, which comes from the secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Fixed addresses on `network`, in order of preference: the container is
    /// created with the first. Clients have two, so that a successor can start
    /// while its predecessor still holds the other (see `addressing.rs`).
    pub addresses: Vec<Ipv4Addr>,
    /// `/etc/hosts` entries, `name:address`: how clients find evi-state.
    pub hosts: Vec<String>,
    /// Join this container's network namespace instead of `network` (and
    /// share its `/etc/hosts`): a probe that sees exactly what a client sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_of: Option<String>,
    pub restart: String,
    /// Seconds `podman stop` waits before SIGKILL: long enough for Valkey to
    /// finish writing its AOF.
    pub stop_timeout: u64,
    /// Hash of the rendered config's effective lines, for containers that mount it.
    pub config_hash: Option<String>,
    pub secret_version: Option<SecretVersion>,
    /// Labels to set, including the ownership and hash labels.
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub content: String,
}

/// What the host should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub config: ConfigFile,
    pub secret_version: SecretVersion,
    pub network: String,
    pub network_spec: NetworkSpec,
    pub volume: String,
    /// In start order: evi-state first.
    pub containers: Vec<ContainerSpec>,
    /// Owned containers that the settings no longer ask for (e.g. evi-worker without an image).
    pub unwanted_containers: Vec<String>,
    /// How many replicas of each client service the settings ask for (0:
    /// none, the service has no image). Replicas numbered above it, found on
    /// the host, are removed, the highest first.
    pub replicas: Vec<(String, u32)>,
    /// The rules of the clients' Valkey user (`acl::client_rules`).
    pub client_rules: String,
}

/// evi-net as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObservedNetwork {
    pub name: String,
    pub labels: Labels,
    pub subnets: Vec<Ipv4Net>,
}

impl ObservedNetwork {
    pub fn owned(&self) -> bool {
        is_owned(&self.labels)
    }
}

/// A volume or secret as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObservedResource {
    pub name: String,
    pub labels: Labels,
}

impl ObservedResource {
    pub fn owned(&self) -> bool {
        is_owned(&self.labels)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub name: String,
    pub image: String,
    pub labels: Labels,
    pub running: bool,
    /// Podman's state word: `running`, `exited`, `created`, ...
    pub state: String,
    /// The networks it is attached to, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// When it last started (Unix seconds), where known: evi-state must not
    /// have started before evi-state-addr, whose network namespace it uses.
    /// Not part of a saved plan's host fingerprint (a restart alone changes it;
    /// the plan it leads to is compared anyway).
    #[serde(skip)]
    pub started_at: Option<i64>,
}

impl ObservedContainer {
    pub fn owned(&self) -> bool {
        is_owned(&self.labels)
    }

    /// The password generation it was given, from its label.
    pub fn secret_version(&self) -> Option<SecretVersion> {
        self.labels
            .get(SECRET_VERSION_LABEL)?
            .parse()
            .ok()
            .map(SecretVersion)
    }
}

pub fn is_owned(labels: &Labels) -> bool {
    labels.get(MANAGED_LABEL).map(String::as_str) == Some("true")
}

/// What the host looks like, as far as evi-install cares.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observed {
    /// The config file's content, if it exists.
    pub config: Option<String>,
    pub network: Option<ObservedNetwork>,
    /// Subnets in use on the host besides evi-net's: other Podman networks
    /// and host routes, each with a description (`Podman network podman`).
    /// Not part of a saved plan's host fingerprint: a route that comes and
    /// goes elsewhere does not change what the plan does.
    #[serde(skip)]
    pub other_subnets: Vec<(String, Ipv4Net)>,
    pub volume: Option<ObservedResource>,
    /// Secrets whose names evi-install uses (`evi-state-password-v*`,
    /// `evi-valkey-url-v*`, `evi-admin-password`).
    pub secrets: Vec<ObservedResource>,
    /// Containers under our names, by name.
    pub containers: BTreeMap<String, ObservedContainer>,
    /// Whether `podman-restart.service` is enabled; `None` without systemd.
    pub boot_unit_enabled: Option<bool>,
    /// The clients' user's rules as the running evi-state describes them
    /// (`ACL LIST`, no hashes); `None` when not read (evi-state not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rules: Option<String>,
}

impl Observed {
    /// Whether evi-install's own password exists (and is ours).
    pub fn has_admin_secret(&self) -> bool {
        self.secrets
            .iter()
            .any(|s| s.name == ADMIN_SECRET && s.owned())
    }

    /// The newest password generation with both secrets present and owned.
    pub fn current_secret_version(&self) -> Option<SecretVersion> {
        let has = |name: String| self.secrets.iter().any(|s| s.name == name && s.owned());
        let mut versions: Vec<SecretVersion> =
            self.secrets.iter().filter_map(secret_version_of).collect();
        versions.sort();
        versions
            .into_iter()
            .rev()
            .find(|v| has(v.password_name()) && has(v.url_name()))
    }
}

/// Whether a secret name is one evi-install looks after: a generation's
/// password or URL, or the admin secret.
pub fn is_our_secret(name: &str) -> bool {
    name == ADMIN_SECRET
        || secret_version_of(&ObservedResource {
            name: name.to_string(),
            ..Default::default()
        })
        .is_some()
}

/// The generation a secret belongs to, read from its name.
pub fn secret_version_of(secret: &ObservedResource) -> Option<SecretVersion> {
    let rest = secret
        .name
        .strip_prefix("evi-state-password-v")
        .or_else(|| secret.name.strip_prefix("evi-valkey-url-v"))?;
    rest.parse().ok().map(SecretVersion)
}

/// The kinds of resources, for messages and plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Secret,
    Network,
    Volume,
    Container,
    /// A systemd unit.
    Unit,
    /// A Valkey user of evi-state.
    User,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Secret => "secret",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Container => "container",
            Kind::Unit => "unit",
            Kind::User => "user",
        }
    }
}

/// What happens to one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// Write the config file (create or update).
    WriteConfig {
        content: String,
    },
    /// Create a new password and its two secrets under these names (and,
    /// with `admin`, evi-install's own password in `ADMIN_SECRET`).
    CreateSecrets {
        version: SecretVersion,
        #[serde(default)]
        admin: bool,
    },
    /// Create evi-install's own password in `ADMIN_SECRET` (a host set up
    /// before it existed).
    CreateAdminSecret,
    /// Change these directives of the running evi-state with `CONFIG SET`
    /// (no restart), then read them back (`live_config.rs`).
    ConfigSet {
        changes: Vec<crate::live_config::LiveChange>,
    },
    CreateNetwork {
        spec: NetworkSpec,
    },
    /// Remove these containers (ours, on the network), the network, and
    /// create it again from the spec.
    ReplaceNetwork {
        spec: NetworkSpec,
        containers: Vec<String>,
    },
    CreateVolume,
    CreateContainer {
        spec: Box<ContainerSpec>,
    },
    /// Stop and remove, then create from the spec.
    ReplaceContainer {
        spec: Box<ContainerSpec>,
    },
    /// Exists and matches, but is not running.
    StartContainer,
    RemoveContainer,
    RemoveSecret,
    RemoveNetwork,
    RemoveVolume,
    /// Delete the config file (`down --purge`).
    RemoveFile,
    /// `systemctl enable` a unit.
    EnableUnit,
    /// Set the clients' user's rules in the running evi-state (`ACL SETUSER`,
    /// `ACL SAVE`; no restart), then read them back.
    SetClientRules {
        rules: String,
    },
    Keep,
}

/// How a change is shown: Terraform's symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    Create,
    Update,
    Replace,
    Start,
    Remove,
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub kind: Kind,
    pub name: String,
    pub verb: Verb,
    /// Why: the field that differs, what is missing, ...
    pub reason: String,
    /// For a config update: a unified diff of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    pub change: Change,
}

/// The ordered steps `up` takes. Keeps are included so the plan shows the whole host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn count(&self, verb: Verb) -> usize {
        self.steps.iter().filter(|s| s.verb == verb).count()
    }
    pub fn has_changes(&self) -> bool {
        self.steps.iter().any(|s| s.verb != Verb::Keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_round_trip_and_nothing_else_is_one() {
        for (service, r) in [("evi-be", 1), ("evi-be", 2), ("evi-worker", 12)] {
            assert_eq!(replica_of(&replica_name(service, r)), Some((service, r)));
        }
        assert_eq!(replica_name("evi-worker", 1), "evi-worker");
        assert_eq!(replica_name("evi-worker", 3), "evi-worker-3");
        for name in [
            "evi-be-1",
            "evi-be-0",
            "evi-be-02",
            "evi-be-next",
            "evi-bench",
            "evi-state",
            "evi-be-2-next",
        ] {
            assert_eq!(replica_of(name), None, "{name}");
        }
        for name in [
            "evi-be-next",
            "evi-worker-3-next",
            "evi-rotate",
            "evi-probe-x",
        ] {
            assert!(is_leftover(name), "{name}");
        }
        for name in ["evi-be", "evi-worker-3", "evi-state-next", "evi-be-1-next"] {
            assert!(!is_leftover(name), "{name}");
        }
    }
}

//! The planner: a pure function from (desired, observed) to an ordered plan.
//!
//! No I/O and no async, so every rule below is covered by table tests against
//! in-memory states. The order of the steps is the order `apply` takes them in:
//! config file, secrets, network, volume, evi-state, clients, clean-up.

use std::collections::BTreeMap;
use std::fmt;

use crate::desired::field_hashes;
use crate::live_config::{describe as describe_live, live_changes};
use crate::model::*;

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// A resource holds one of our names but evi-install did not create it.
    Foreign { kind: Kind, name: String },
    /// evi-net's subnet would overlap a host route or another Podman network.
    SubnetOverlap {
        subnet: ipnet::Ipv4Net,
        with: String,
        other: ipnet::Ipv4Net,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Foreign { kind, name } => write!(
                f,
                "{} `{name}` exists but was not created by evi-install (it lacks the label {MANAGED_LABEL}=true), \
                 so evi-install will not touch it; remove or rename it (`podman {} rm {name}`) and run again",
                kind.as_str(),
                kind.as_str(),
            ),
            PlanError::SubnetOverlap {
                subnet,
                with,
                other,
            } => write!(
                f,
                "network_subnet {subnet} overlaps {other} of {with}; \
                 set `network_subnet` in the settings to a free private range"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// The password generation `up` should use: the current complete pair, or a
/// new one numbered past every secret already seen (so a leftover from an
/// interrupted run never collides with the new names).
pub fn secret_version_for(observed: &Observed) -> SecretVersion {
    observed.current_secret_version().unwrap_or_else(|| {
        observed
            .secrets
            .iter()
            .filter_map(secret_version_of)
            .max()
            .map_or(SecretVersion(1), SecretVersion::next)
    })
}

/// Refuses to plan over resources that carry our names but not our label.
pub fn check_ownership(desired: &Desired, observed: &Observed) -> Result<(), PlanError> {
    let foreign = |kind, name: &str| {
        Err(PlanError::Foreign {
            kind,
            name: name.to_string(),
        })
    };
    for c in desired
        .containers
        .iter()
        .map(|c| &c.name)
        .chain(&desired.unwanted_containers)
    {
        if let Some(existing) = observed.containers.get(c) {
            if !existing.owned() {
                return foreign(Kind::Container, c);
            }
        }
    }
    if let Some(n) = observed.network.as_ref().filter(|n| !n.owned()) {
        return foreign(Kind::Network, &n.name);
    }
    if let Some(v) = observed.volume.as_ref().filter(|v| !v.owned()) {
        return foreign(Kind::Volume, &v.name);
    }
    if let Some(s) = observed.secrets.iter().find(|s| !s.owned()) {
        return foreign(Kind::Secret, &s.name);
    }
    Ok(())
}

pub fn plan(desired: &Desired, observed: &Observed) -> Result<Plan, PlanError> {
    check_ownership(desired, observed)?;
    let mut steps = Vec::new();

    let config = config_step(desired, observed);
    let config_changes = config.verb != Verb::Keep;
    steps.push(config);
    let mut live_first: Option<Step> = None;

    let version = desired.secret_version;
    let secrets_name = format!("{} + {}", version.password_name(), version.url_name());
    let admin = !observed.has_admin_secret();
    if observed.current_secret_version() != Some(version) {
        steps.push(step(
            Kind::Secret,
            &secrets_name,
            Verb::Create,
            "no password yet: a new one is generated and never shown",
            Change::CreateSecrets { version, admin },
        ));
    } else if admin {
        steps.push(step(
            Kind::Secret,
            ADMIN_SECRET,
            Verb::Create,
            "evi-install's own Valkey user has no password yet: one is generated and never shown",
            Change::CreateAdminSecret,
        ));
    } else {
        steps.push(keep(Kind::Secret, &secrets_name));
    }

    let (network_step, network_created) = network_step(desired, observed)?;
    steps.push(network_step);
    let volume_created = observed.volume.is_none();
    steps.push(if volume_created {
        step(
            Kind::Volume,
            &desired.volume,
            Verb::Create,
            "missing",
            Change::CreateVolume,
        )
    } else {
        keep(Kind::Volume, &desired.volume)
    });

    // Containers made or started anew: one in the network namespace of such a
    // container must be made anew too (desired lists the owner first).
    let mut renewed: Vec<&str> = Vec::new();
    for spec in &desired.containers {
        let mounts_new_volume = volume_created
            && spec
                .mounts
                .iter()
                .any(|m| matches!(m, Mount::Volume { .. }));
        let current = observed.containers.get(&spec.name);
        let owner_changed = spec.network_of.as_deref().and_then(|owner| {
            if renewed.contains(&owner) {
                Some(format!(
                    "it runs in the network namespace of {owner}, which is being (re-)started"
                ))
            } else {
                restarted_after(observed.containers.get(owner), current).then(|| {
                    format!(
                        "it runs in the network namespace of {owner}, which restarted after it \
                         and left it on no network"
                    )
                })
            }
        });
        let container = container_step(
            spec,
            current,
            network_created,
            mounts_new_volume,
            owner_changed,
        );
        if container.verb != Verb::Keep {
            renewed.push(&spec.name);
        }
        // After evi-state (and its readiness), before the clients start.
        let rules = (spec.name == STATE_CONTAINER)
            .then(|| rules_step(desired, observed, volume_created))
            .flatten();
        if spec.name == STATE_CONTAINER && container.verb == Verb::Keep && config_changes {
            // The running server keeps going; its new settings are applied in
            // place, before the file is written (see `live_step`).
            if let Some(live) = live_step(desired, observed) {
                live_first = Some(live);
                steps.extend(rules);
                continue;
            }
        }
        steps.push(container);
        steps.extend(rules);
    }
    if let Some(live) = live_first {
        steps.insert(0, live);
    }

    if observed.boot_unit_enabled == Some(false) {
        let reason = "brings the containers back after a reboot";
        steps.push(step(
            Kind::Unit,
            BOOT_UNIT,
            Verb::Create,
            reason,
            Change::EnableUnit,
        ));
    } else if observed.boot_unit_enabled == Some(true) {
        steps.push(keep(Kind::Unit, BOOT_UNIT));
    }

    // Replicas 2..N the settings no longer ask for (scaling down, or a service
    // without an image), the highest-numbered first, and the successors an
    // interrupted replacement of one left. Only ours: a foreign container under
    // such a name is not in the way of anything and is left alone.
    for (name, reason) in surplus_replicas(desired, observed) {
        steps.push(step(
            Kind::Container,
            &name,
            Verb::Remove,
            &reason,
            Change::RemoveContainer,
        ));
    }

    for name in &desired.unwanted_containers {
        if observed.containers.contains_key(name) {
            steps.push(step(
                Kind::Container,
                name,
                Verb::Remove,
                if is_leftover(name) {
                    "left over from an interrupted run"
                } else {
                    "no image set for it in the settings"
                },
                Change::RemoveContainer,
            ));
        }
    }

    for secret in &observed.secrets {
        if secret.name != ADMIN_SECRET && secret_version_of(secret) != Some(version) {
            let reason = format!("superseded by generation v{}", version.0);
            steps.push(step(
                Kind::Secret,
                &secret.name,
                Verb::Remove,
                &reason,
                Change::RemoveSecret,
            ));
        }
    }

    Ok(Plan { steps })
}

/// Owned replicas numbered above what the settings ask for, highest first,
/// then owned leftover successors of replicas 2..N, each with its reason.
fn surplus_replicas(desired: &Desired, observed: &Observed) -> Vec<(String, String)> {
    let mut surplus: Vec<(&str, u32, String)> = Vec::new();
    let mut leftovers = Vec::new();
    for c in observed.containers.values().filter(|c| c.owned()) {
        if let Some((service, r)) = replica_of(&c.name) {
            let wanted = desired
                .replicas
                .iter()
                .find(|(s, _)| s == service)
                .map_or(0, |(_, n)| *n);
            if r >= 2 && r > wanted {
                let reason = if wanted == 0 {
                    "no image set for it in the settings".to_string()
                } else {
                    format!("scale down: the settings ask for {wanted} replicas of {service}")
                };
                surplus.push((service, r, reason));
            }
        } else if c
            .name
            .strip_suffix("-next")
            .and_then(replica_of)
            .is_some_and(|(_, r)| r >= 2)
        {
            leftovers.push(c.name.clone());
        }
    }
    surplus.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(String, String)> = surplus
        .into_iter()
        .map(|(service, r, reason)| (replica_name(service, r), reason))
        .collect();
    out.extend(
        leftovers
            .into_iter()
            .map(|n| (n, "left over from an interrupted run".to_string())),
    );
    out
}

/// What `down` removes: leftovers of an interrupted run, our containers
/// (clients first) and the network; with `purge`, also the data volume, the
/// secrets and the config file. Resources under our names that we do not own
/// are left alone and reported in `skipped`.
pub fn plan_down(
    observed: &Observed,
    network: &str,
    config_path: &str,
    purge: bool,
) -> (Plan, Vec<String>) {
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    let mut foreign = |kind: Kind, name: &str| skipped.push(format!("{} {name}", kind.as_str()));
    for c in observed
        .containers
        .values()
        .filter(|c| is_leftover(&c.name))
    {
        if c.owned() {
            let reason = "down: left over from an interrupted run";
            steps.push(step(
                Kind::Container,
                &c.name,
                Verb::Remove,
                reason,
                Change::RemoveContainer,
            ));
        } else {
            foreign(Kind::Container, &c.name);
        }
    }
    // The clients, evi-worker's before evi-be's, each service's highest-numbered first.
    let mut clients: Vec<(&str, u32, &str)> = observed
        .containers
        .keys()
        .filter_map(|name| replica_of(name).map(|(service, r)| (service, r, name.as_str())))
        .collect();
    clients.sort_by(|a, b| b.0.cmp(a.0).then(b.1.cmp(&a.1)));
    let names: Vec<&str> = clients
        .iter()
        .map(|(_, _, name)| *name)
        .chain([STATE_CONTAINER, STATE_ADDRESS_CONTAINER])
        .collect();
    for name in names {
        match observed.containers.get(name) {
            Some(c) if c.owned() => steps.push(step(
                Kind::Container,
                name,
                Verb::Remove,
                "down",
                Change::RemoveContainer,
            )),
            Some(_) => foreign(Kind::Container, name),
            None => {}
        }
    }
    match &observed.network {
        Some(n) if n.owned() => steps.push(step(
            Kind::Network,
            network,
            Verb::Remove,
            "down",
            Change::RemoveNetwork,
        )),
        Some(_) => foreign(Kind::Network, network),
        None => {}
    }
    if purge {
        let reason = "down --purge";
        match &observed.volume {
            Some(v) if v.owned() => steps.push(step(
                Kind::Volume,
                &v.name,
                Verb::Remove,
                "down --purge: its data is deleted",
                Change::RemoveVolume,
            )),
            Some(v) => foreign(Kind::Volume, &v.name),
            None => {}
        }
        for secret in &observed.secrets {
            if secret.owned() {
                steps.push(step(
                    Kind::Secret,
                    &secret.name,
                    Verb::Remove,
                    reason,
                    Change::RemoveSecret,
                ));
            } else {
                foreign(Kind::Secret, &secret.name);
            }
        }
        if observed.config.is_some() {
            steps.push(step(
                Kind::File,
                config_path,
                Verb::Remove,
                reason,
                Change::RemoveFile,
            ));
        }
    }
    (Plan { steps }, skipped)
}

/// Whether `owner` started after `dependent`, both running: a container that
/// joined its owner's network namespace keeps the old one when the owner
/// restarts (its restart policy, or by hand), and is then on no network.
fn restarted_after(
    owner: Option<&ObservedContainer>,
    dependent: Option<&ObservedContainer>,
) -> bool {
    match (owner, dependent) {
        (Some(o), Some(d)) if o.running && d.running => {
            matches!((o.started_at, d.started_at), (Some(a), Some(b)) if a > b)
        }
        _ => false,
    }
}

/// Our containers, in an order Podman can remove them in: evi-state before
/// evi-state-addr, whose network namespace it runs in.
fn on_network_removal_order(observed: &Observed) -> Vec<String> {
    let mut names: Vec<String> = observed
        .containers
        .values()
        .filter(|c| c.owned())
        .map(|c| c.name.clone())
        .collect();
    names.sort_by_key(|n| n == STATE_ADDRESS_CONTAINER);
    names
}

/// evi-net: created, kept, or re-created when its subnet is not the one the
/// fixed addresses come from (a network made before addresses were fixed, or
/// a changed `network_subnet`). The bool says whether the containers on it
/// are re-created too.
fn network_step(desired: &Desired, observed: &Observed) -> Result<(Step, bool), PlanError> {
    let spec = &desired.network_spec;
    let name = &desired.network;
    let reason = match &observed.network {
        None => "missing".to_string(),
        Some(n) if n.subnets.contains(&spec.subnet) => {
            return Ok((keep(Kind::Network, name), false))
        }
        Some(n) => {
            let had = n
                .subnets
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "its subnet is {had}, not {} (network_subnet): evi-state needs a fixed address in it, \
                 so that clients find it without DNS; the containers on it are re-created",
                spec.subnet
            )
        }
    };
    let others = observed.other_subnets.iter().map(|(w, n)| (w.as_str(), *n));
    if let Some((with, other)) = crate::addressing::first_overlap(spec.subnet, others) {
        return Err(PlanError::SubnetOverlap {
            subnet: spec.subnet,
            with: with.to_string(),
            other,
        });
    }
    let step = match &observed.network {
        None => step(
            Kind::Network,
            name,
            Verb::Create,
            &reason,
            Change::CreateNetwork { spec: spec.clone() },
        ),
        Some(_) => step(
            Kind::Network,
            name,
            Verb::Replace,
            &reason,
            Change::ReplaceNetwork {
                spec: spec.clone(),
                containers: on_network_removal_order(observed),
            },
        ),
    };
    Ok((step, true))
}

fn config_step(desired: &Desired, observed: &Observed) -> Step {
    let path = desired.config.path.display().to_string();
    let content = &desired.config.content;
    let write = Change::WriteConfig {
        content: content.clone(),
    };
    match &observed.config {
        None => step(Kind::File, &path, Verb::Create, "missing", write),
        Some(current) if current == content => keep(Kind::File, &path),
        Some(current) => {
            let mut s = step(
                Kind::File,
                &path,
                Verb::Update,
                "content differs from the settings",
                write,
            );
            s.diff = Some(unified_diff(current, content));
            s
        }
    }
}

/// evi-state kept, its config file changing: the live directives that
/// differ, set with `CONFIG SET` on the running server. It comes first in the
/// plan: a value Valkey refuses then stops the run before the file is written,
/// and a run killed in between leaves the old file, so the next `up` applies
/// the same change again (it can be repeated).
fn live_step(desired: &Desired, observed: &Observed) -> Option<Step> {
    // No file, no record of what evi-state was given: it was given the settings
    // when it was made (its hash says so), and the file is only written anew.
    let old = observed.config.as_deref()?;
    let changes = live_changes(Some(old), &desired.config.content);
    if changes.is_empty() {
        return None;
    }
    Some(step(
        Kind::Container,
        STATE_CONTAINER,
        Verb::Update,
        &format!("in place: {} (no restart)", describe_live(&changes)),
        Change::ConfigSet { changes },
    ))
}

/// The clients' user's rules, set in the running evi-state when what it
/// has (or will start with) differs from the settings': new settings, an
/// older evi-install's rules, or a change made on the server (drift). A
/// first start on a new volume takes [`DEFAULT_USER_RULES`]; any later start
/// the ACL file's, that is what the running server has. Unknown (evi-state
/// not running): set again, which changes nothing when they are right.
///
/// [`DEFAULT_USER_RULES`]: crate::acl::DEFAULT_USER_RULES
fn rules_step(desired: &Desired, observed: &Observed, volume_created: bool) -> Option<Step> {
    let want = crate::acl::describe(&desired.client_rules);
    let start_with = if volume_created {
        Some(crate::acl::describe(crate::acl::DEFAULT_USER_RULES))
    } else {
        observed.client_rules.clone()
    };
    let reason = match start_with {
        Some(have) if have == want => return None,
        _ if volume_created => "valkey.client_access adds to the clients' rules: set once evi-state runs (no restart)",
        Some(_) => "the clients' rules differ from the settings: set in place (no restart)",
        None => "the clients' rules could not be read (evi-state not running): set once it runs (no restart)",
    };
    Some(step(
        Kind::User,
        crate::acl::CLIENT_USER,
        Verb::Update,
        reason,
        Change::SetClientRules {
            rules: desired.client_rules.clone(),
        },
    ))
}

fn container_step(
    spec: &ContainerSpec,
    observed: Option<&ObservedContainer>,
    network_created: bool,
    volume_created: bool,
    owner_changed: Option<String>,
) -> Step {
    let create = |verb, reason: &str| {
        // Replacing evi-state restarts Valkey, which reloads its whole data set: say so.
        let reason = if spec.name == STATE_CONTAINER && verb == Verb::Replace {
            format!("restart: {reason}")
        } else {
            reason.to_string()
        };
        let reason = reason.as_str();
        let change = match verb {
            Verb::Create => Change::CreateContainer {
                spec: Box::new(spec.clone()),
            },
            _ => Change::ReplaceContainer {
                spec: Box::new(spec.clone()),
            },
        };
        step(Kind::Container, &spec.name, verb, reason, change)
    };
    let Some(current) = observed else {
        return create(Verb::Create, "missing");
    };
    let mut drift = drifted_fields(spec, current);
    // (A container in another's network namespace is on no network itself.)
    let detached = !spec.network.is_empty()
        && current
            .networks
            .as_ref()
            .is_some_and(|n| !n.contains(&spec.network));
    if detached && drift.is_empty() {
        drift.push(format!("attachment to {}", spec.network));
    }
    if !drift.is_empty() {
        return create(Verb::Replace, &format!("{} changed", drift.join(", ")));
    }
    if network_created {
        return create(
            Verb::Replace,
            &format!("its network {} is being (re-)created", spec.network),
        );
    }
    if volume_created {
        return create(Verb::Replace, "its data volume is being created");
    }
    if let Some(reason) = owner_changed {
        return create(Verb::Replace, &reason);
    }
    if !current.running {
        return step(
            Kind::Container,
            &spec.name,
            Verb::Start,
            &format!("matches but is {}", current.state),
            Change::StartContainer,
        );
    }
    keep(Kind::Container, &spec.name)
}

/// The names of the fields that differ between the spec and the container's
/// labels, or `definition` when the labels say too little to tell.
fn drifted_fields(spec: &ContainerSpec, current: &ObservedContainer) -> Vec<String> {
    if current.labels.get(HASH_LABEL) == spec.labels.get(HASH_LABEL) {
        return vec![];
    }
    let recorded: Option<BTreeMap<String, String>> = current
        .labels
        .get(FIELDS_LABEL)
        .and_then(|json| serde_json::from_str(json).ok());
    let Some(recorded) = recorded else {
        return vec!["definition".to_string()];
    };
    let fields: Vec<String> = field_hashes(spec)
        .into_iter()
        .filter(|(name, hash)| recorded.get(name) != Some(hash))
        .map(|(name, _)| match name.as_str() {
            "config" => "valkey.conf".to_string(),
            _ => name,
        })
        .collect();
    if fields.is_empty() {
        vec!["definition".to_string()]
    } else {
        fields
    }
}

pub fn unified_diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header("current", "planned")
        .to_string()
}

fn step(kind: Kind, name: &str, verb: Verb, reason: &str, change: Change) -> Step {
    Step {
        kind,
        name: name.to_string(),
        verb,
        reason: reason.to_string(),
        diff: None,
        change,
    }
}

fn keep(kind: Kind, name: &str) -> Step {
    step(kind, name, Verb::Keep, "matches the settings", Change::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{build, owned_labels};
    use crate::settings::from_yaml;

    const CONF: &str = "maxmemory 1gb\n";

    fn desired(conf: &str, yaml: &str) -> Desired {
        let settings = from_yaml(Some((std::path::Path::new("evi.yaml"), yaml)), None).unwrap();
        build(&settings, conf, SecretVersion(1))
    }

    fn app() -> Desired {
        desired(
            CONF,
            "services: { evi-be: { image: app }, evi-worker: { image: app } }",
        )
    }

    /// The host exactly as `up` leaves it for `d`.
    fn converged(d: &Desired) -> Observed {
        let owned = |name: &str| ObservedResource {
            name: name.to_string(),
            labels: owned_labels(),
        };
        Observed {
            config: Some(d.config.content.clone()),
            network: Some(ObservedNetwork {
                name: d.network.clone(),
                labels: owned_labels(),
                subnets: vec![d.network_spec.subnet],
            }),
            other_subnets: vec![],
            volume: Some(owned(&d.volume)),
            secrets: vec![
                owned(&d.secret_version.password_name()),
                owned(&d.secret_version.url_name()),
                owned(ADMIN_SECRET),
            ],
            containers: d
                .containers
                .iter()
                .map(|c| {
                    let o = ObservedContainer {
                        name: c.name.clone(),
                        image: c.image.clone(),
                        labels: c.labels.clone(),
                        running: true,
                        state: "running".into(),
                        // One in another's network namespace is on no network.
                        networks: Some(
                            Some(c.network.clone())
                                .filter(|n| !n.is_empty())
                                .into_iter()
                                .collect(),
                        ),
                        started_at: Some(1_700_000_000),
                    };
                    (c.name.clone(), o)
                })
                .collect(),
            boot_unit_enabled: None,
            client_rules: Some(crate::acl::describe(&d.client_rules)),
        }
    }

    type Mutate = fn(&mut Observed);

    fn summary(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .filter(|s| s.verb != Verb::Keep)
            .map(|s| format!("{:?} {} {}", s.verb, s.kind.as_str(), s.name))
            .collect()
    }

    #[test]
    fn fresh_host_creates_everything_in_dependency_order() {
        let p = plan(&app(), &Observed::default()).unwrap();
        assert_eq!(
            summary(&p),
            [
                "Create file /var/lib/evi/valkey/valkey.conf",
                "Create secret evi-state-password-v1 + evi-valkey-url-v1",
                "Create network evi-net",
                "Create volume evi-state-data",
                "Create container evi-state-addr",
                "Create container evi-state",
                "Create container evi-be",
                "Create container evi-worker",
            ]
        );
    }

    #[test]
    fn converged_host_has_no_changes() {
        let d = app();
        let p = plan(&d, &converged(&d)).unwrap();
        assert!(!p.has_changes(), "{:?}", summary(&p));
        assert_eq!(p.count(Verb::Keep), 8);
    }

    #[test]
    fn the_clients_rules_are_set_in_place_when_the_servers_differ_from_the_settings() {
        let d = app();
        let mut o = converged(&d);
        o.client_rules = Some("~* &* -@all +@all".into());
        let p = plan(&d, &o).unwrap();
        assert_eq!(summary(&p), ["Update user default"]);
        // After evi-state, before the clients; evi-state itself is kept.
        let at = |name: &str| p.steps.iter().position(|s| s.name == name).unwrap();
        assert!(at(STATE_CONTAINER) < at("default") && at("default") < at("evi-be"));
        assert_eq!(
            p.steps[at("default")].change,
            Change::SetClientRules {
                rules: d.client_rules.clone()
            }
        );

        // New settings: the same step, and evi-state's definition is unchanged.
        let wide = desired(
            CONF,
            "services: { evi-be: { image: app }, evi-worker: { image: app } }\n\
             valkey: { client_access: { commands: [scan], keys: ['session:*'] } }",
        );
        let p = plan(&wide, &converged(&d)).unwrap();
        assert_eq!(summary(&p), ["Update user default"]);

        // A new volume starts with the built-in rules: a step only when the settings add to them.
        let p = plan(&d, &Observed::default()).unwrap();
        assert!(!summary(&p).iter().any(|s| s.contains("user")));
        let p = plan(&wide, &Observed::default()).unwrap();
        let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(at(STATE_CONTAINER) < at("default") && at("default") < at("evi-be"));

        // Not readable (evi-state stopped): set again once it runs.
        let mut o = converged(&d);
        o.client_rules = None;
        assert_eq!(summary(&plan(&d, &o).unwrap()), ["Update user default"]);
    }

    #[test]
    fn a_host_set_up_before_evi_install_had_its_own_user_gets_its_password() {
        let d = app();
        let mut o = converged(&d);
        o.secrets.retain(|s| s.name != ADMIN_SECRET);
        let p = plan(&d, &o).unwrap();
        assert_eq!(summary(&p), ["Create secret evi-admin-password"]);
        assert_eq!(p.steps[1].change, Change::CreateAdminSecret);
        // And it is never removed as a superseded generation.
        let p = plan(&d, &converged(&d)).unwrap();
        assert!(!summary(&p).iter().any(|s| s.contains(ADMIN_SECRET)));
    }

    #[test]
    fn table_of_drift() {
        let cases: Vec<(&str, Mutate, Vec<&str>)> = vec![
            (
                "evi-be removed by hand",
                |o| {
                    o.containers.remove("evi-be");
                },
                vec!["Create container evi-be"],
            ),
            (
                "config removed by hand",
                |o| o.config = None,
                vec!["Create file /var/lib/evi/valkey/valkey.conf"],
            ),
            (
                "evi-worker stopped",
                |o| o.containers.get_mut("evi-worker").unwrap().running = false,
                vec!["Start container evi-worker"],
            ),
            (
                "volume gone: evi-state must move to the new one",
                |o| o.volume = None,
                vec![
                    "Create volume evi-state-data",
                    "Replace container evi-state",
                ],
            ),
            (
                "evi-state-addr stopped: evi-state must join its new network namespace",
                |o| o.containers.get_mut("evi-state-addr").unwrap().running = false,
                vec![
                    "Start container evi-state-addr",
                    "Replace container evi-state",
                ],
            ),
            (
                "evi-state-addr restarted after evi-state (evi-state kept the old namespace)",
                |o| {
                    o.containers.get_mut("evi-state-addr").unwrap().started_at = Some(1_700_000_100)
                },
                vec!["Replace container evi-state"],
            ),
            (
                "evi-be disconnected from evi-net by hand",
                |o| o.containers.get_mut("evi-be").unwrap().networks = Some(vec![]),
                vec!["Replace container evi-be"],
            ),
            (
                "evi-net made before fixed addresses (Podman chose its subnet)",
                |o| o.network.as_mut().unwrap().subnets = vec!["10.89.0.0/24".parse().unwrap()],
                vec![
                    "Replace network evi-net",
                    "Replace container evi-state-addr",
                    "Replace container evi-state",
                    "Replace container evi-be",
                    "Replace container evi-worker",
                ],
            ),
            (
                "a leftover probe of an interrupted run",
                |o| {
                    let probe = ObservedContainer {
                        name: "evi-probe".into(),
                        labels: owned_labels(),
                        ..Default::default()
                    };
                    o.containers.insert("evi-probe".into(), probe);
                },
                vec!["Remove container evi-probe"],
            ),
            (
                "old generation left behind",
                |o| {
                    o.secrets.push(ObservedResource {
                        name: "evi-valkey-url-v0".into(),
                        labels: owned_labels(),
                    })
                },
                vec!["Remove secret evi-valkey-url-v0"],
            ),
        ];
        let d = app();
        for (name, mutate, expected) in cases {
            let mut o = converged(&d);
            mutate(&mut o);
            assert_eq!(summary(&plan(&d, &o).unwrap()), expected, "{name}");
        }
    }

    fn scaled(be: u32, worker: u32) -> Desired {
        desired(
            CONF,
            &format!(
                "services: {{ evi-be: {{ image: app, replicas: {be} }}, evi-worker: {{ image: app, replicas: {worker} }} }}"
            ),
        )
    }

    /// `up` with replicas 1 -> 3 -> 2 -> 1 (and both services at once): each
    /// step changes only the replicas that differ, removes the highest-numbered
    /// first, and a second `up` has nothing to do.
    #[test]
    fn scaling_changes_only_the_replicas_that_differ_highest_first() {
        type Scale = (u32, u32);
        let cases: Vec<(Scale, Scale, Vec<&str>)> = vec![
            (
                (1, 1),
                (1, 3),
                vec![
                    "Create container evi-worker-2",
                    "Create container evi-worker-3",
                ],
            ),
            ((1, 3), (1, 2), vec!["Remove container evi-worker-3"]),
            ((1, 2), (1, 1), vec!["Remove container evi-worker-2"]),
            (
                (1, 3),
                (1, 1),
                vec![
                    "Remove container evi-worker-3",
                    "Remove container evi-worker-2",
                ],
            ),
            (
                (1, 1),
                (2, 3),
                vec![
                    "Create container evi-be-2",
                    "Create container evi-worker-2",
                    "Create container evi-worker-3",
                ],
            ),
            (
                (3, 2),
                (1, 2),
                vec!["Remove container evi-be-3", "Remove container evi-be-2"],
            ),
            (
                (2, 3),
                (2, 1),
                vec![
                    "Remove container evi-worker-3",
                    "Remove container evi-worker-2",
                ],
            ),
        ];
        for (from, to, expected) in cases {
            let (old, new) = (scaled(from.0, from.1), scaled(to.0, to.1));
            let p = plan(&new, &converged(&old)).unwrap();
            assert_eq!(summary(&p), expected, "{from:?} -> {to:?}");
            // What is kept is kept as it is: the other service's replicas never move.
            assert_eq!(
                p.count(Verb::Keep),
                8 + (from.0.min(to.0) + from.1.min(to.1)) as usize - 2,
                "{from:?} -> {to:?}"
            );
            let removed = p.steps.iter().find(|s| s.verb == Verb::Remove);
            if let Some(r) = removed {
                assert!(
                    r.reason.starts_with("scale down: the settings ask for"),
                    "{}",
                    r.reason
                );
            }
            // The second `up`: nothing to do.
            assert!(
                !plan(&new, &converged(&new)).unwrap().has_changes(),
                "{to:?}"
            );
        }
    }

    #[test]
    fn replicas_without_an_image_go_and_foreign_look_alikes_stay() {
        let old = scaled(1, 3);
        let new = desired(CONF, "services: { evi-be: { image: app } }");
        assert_eq!(
            summary(&plan(&new, &converged(&old)).unwrap()),
            [
                "Remove container evi-worker-3",
                "Remove container evi-worker-2",
                "Remove container evi-worker"
            ]
        );
        let d = scaled(1, 1);
        let mut o = converged(&d);
        for (name, owned) in [
            ("evi-worker-5", false),
            ("evi-worker-01", true),
            ("evi-bench", true),
            ("evi-worker-4-next", true),
        ] {
            let c = ObservedContainer {
                name: name.into(),
                labels: if owned { owned_labels() } else { Labels::new() },
                ..Default::default()
            };
            o.containers.insert(name.into(), c);
        }
        assert_eq!(
            summary(&plan(&d, &o).unwrap()),
            ["Remove container evi-worker-4-next"],
            "only our replicas' leftovers; a foreign evi-worker-5 and names that are no replica's are left alone"
        );
    }

    #[test]
    fn down_removes_every_replica_workers_first_highest_first() {
        let d = scaled(2, 3);
        let (p, _) = plan_down(&converged(&d), "evi-net", "/s/valkey.conf", false);
        assert_eq!(
            summary(&p),
            [
                "Remove container evi-worker-3",
                "Remove container evi-worker-2",
                "Remove container evi-worker",
                "Remove container evi-be-2",
                "Remove container evi-be",
                "Remove container evi-state",
                "Remove container evi-state-addr",
                "Remove network evi-net"
            ]
        );
    }

    #[test]
    fn a_network_with_another_subnet_is_re_created_with_everything_on_it() {
        let d = app();
        let mut o = converged(&d);
        o.network.as_mut().unwrap().subnets = vec!["10.89.0.0/24".parse().unwrap()];
        let p = plan(&d, &o).unwrap();
        let net = p.steps.iter().find(|s| s.kind == Kind::Network).unwrap();
        assert!(net
            .reason
            .starts_with("its subnet is 10.89.0.0/24, not 10.90.213.0/24"));
        match &net.change {
            Change::ReplaceNetwork { spec, containers } => {
                assert_eq!(spec.subnet, d.network_spec.subnet);
                // evi-state-addr last: evi-state runs in its network namespace.
                assert_eq!(
                    containers,
                    &["evi-be", "evi-state", "evi-worker", "evi-state-addr"]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_subnet_in_use_on_the_host_is_refused_before_any_change() {
        let d = app();
        let used = |with: &str, net: &str| Observed {
            other_subnets: vec![(with.to_string(), net.parse().unwrap())],
            ..Observed::default()
        };
        let err = plan(&d, &used("the Podman network `other`", "10.90.0.0/16")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network_subnet 10.90.213.0/24 overlaps 10.90.0.0/16 of the Podman network `other`; \
             set `network_subnet` in the settings to a free private range"
        );
        assert!(plan(&d, &used("the host route on eth0", "10.90.213.128/25")).is_err());
        assert!(plan(&d, &used("the host route on eth0", "10.90.214.0/24")).is_ok());
        // An existing evi-net of the right subnet is not checked again.
        let mut o = converged(&d);
        o.other_subnets = vec![("x".into(), "10.0.0.0/8".parse().unwrap())];
        assert!(plan(&d, &o).is_ok());
    }

    #[test]
    fn a_live_config_change_updates_evi_state_in_place_before_the_file() {
        let old = app();
        let new = desired(
            "maxmemory 512mb\n",
            "services: { evi-be: { image: app }, evi-worker: { image: app } }",
        );
        let p = plan(&new, &converged(&old)).unwrap();
        assert_eq!(
            summary(&p),
            [
                "Update container evi-state",
                "Update file /var/lib/evi/valkey/valkey.conf"
            ]
        );
        assert_eq!(
            p.steps[0].reason,
            "in place: maxmemory 1gb → 512mb (no restart)"
        );
        assert_eq!(
            p.steps[0].change,
            Change::ConfigSet {
                changes: vec![crate::live_config::LiveChange {
                    key: "maxmemory".into(),
                    old: Some("1gb".into()),
                    new: "512mb".into()
                }]
            }
        );
        assert_eq!(
            p.steps[1].diff.as_deref(),
            Some("--- current\n+++ planned\n@@ -1 +1 @@\n-maxmemory 1gb\n+maxmemory 512mb\n")
        );
        assert_eq!(p.count(Verb::Update), 2);
    }

    #[test]
    fn a_config_change_that_needs_a_restart_replaces_evi_state_only_and_says_so() {
        let old = desired(
            "port 6379\nmaxmemory 1gb\n",
            "services: { evi-be: { image: app }, evi-worker: { image: app } }",
        );
        let new = desired(
            "port 6380\nmaxmemory 512mb\n",
            "services: { evi-be: { image: app }, evi-worker: { image: app } }",
        );
        let p = plan(&new, &converged(&old)).unwrap();
        assert_eq!(
            summary(&p),
            [
                "Update file /var/lib/evi/valkey/valkey.conf",
                "Replace container evi-state"
            ]
        );
        let replace = p.steps.iter().find(|s| s.verb == Verb::Replace).unwrap();
        assert_eq!(replace.reason, "restart: valkey.conf changed");
    }

    #[test]
    fn a_header_only_change_rewrites_the_file_without_restarting() {
        let old = app();
        let new = desired(
            "# new header\nmaxmemory 1gb\n",
            "services: { evi-be: { image: app }, evi-worker: { image: app } }",
        );
        assert_eq!(
            summary(&plan(&new, &converged(&old)).unwrap()),
            ["Update file /var/lib/evi/valkey/valkey.conf"]
        );
    }

    #[test]
    fn an_image_change_names_the_field() {
        let old = app();
        let new = desired(
            CONF,
            "services: { evi-be: { image: app2 }, evi-worker: { image: app } }",
        );
        let p = plan(&new, &converged(&old)).unwrap();
        let s = p.steps.iter().find(|s| s.verb == Verb::Replace).unwrap();
        assert_eq!(
            (s.name.as_str(), s.reason.as_str()),
            ("evi-be", "image changed")
        );
    }

    #[test]
    fn a_worker_dropped_from_the_settings_is_removed() {
        let old = app();
        let new = desired(CONF, "services: { evi-be: { image: app } }");
        assert_eq!(
            summary(&plan(&new, &converged(&old)).unwrap()),
            ["Remove container evi-worker"]
        );
    }

    #[test]
    fn foreign_resources_stop_the_plan() {
        let d = app();
        let cases: Vec<(Mutate, &str)> = vec![
            (
                |o| o.containers.get_mut("evi-state").unwrap().labels.clear(),
                "container `evi-state`",
            ),
            (
                |o| o.network.as_mut().unwrap().labels.clear(),
                "network `evi-net`",
            ),
            (
                |o| o.volume.as_mut().unwrap().labels.clear(),
                "volume `evi-state-data`",
            ),
            (
                |o| o.secrets[0].labels.clear(),
                "secret `evi-state-password-v1`",
            ),
        ];
        for (mutate, named) in cases {
            let mut o = converged(&d);
            mutate(&mut o);
            let err = plan(&d, &o).unwrap_err().to_string();
            assert!(err.starts_with(named), "{err}");
        }
    }

    #[test]
    fn down_removes_what_we_own_and_purge_removes_the_rest() {
        let d = app();
        let mut o = converged(&d);
        o.containers.get_mut("evi-be").unwrap().labels.clear();
        let (p, skipped) = plan_down(&o, "evi-net", "/s/valkey.conf", false);
        assert_eq!(
            summary(&p),
            [
                "Remove container evi-worker",
                "Remove container evi-state",
                "Remove container evi-state-addr",
                "Remove network evi-net"
            ]
        );
        assert_eq!(skipped, ["container evi-be"]);
        let (p, _) = plan_down(&o, "evi-net", "/s/valkey.conf", true);
        assert_eq!(
            summary(&p)[4..],
            [
                "Remove volume evi-state-data",
                "Remove secret evi-state-password-v1",
                "Remove secret evi-valkey-url-v1",
                "Remove secret evi-admin-password",
                "Remove file /s/valkey.conf",
            ]
        );
        assert!(!plan_down(&Observed::default(), "evi-net", "/s", true)
            .0
            .has_changes());
    }

    #[test]
    fn down_removes_our_leftovers_of_an_interrupted_run_first_and_only_ours() {
        let d = app();
        let leftover = |name: &str, owned: bool| ObservedContainer {
            name: name.into(),
            labels: if owned { owned_labels() } else { Labels::new() },
            running: true,
            state: "running".into(),
            ..Default::default()
        };
        type Case = (
            &'static str,
            Vec<(&'static str, bool)>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "a rotation killed mid-way",
                vec![("evi-be-next", true), ("evi-rotate", true)],
                vec![
                    "Remove container evi-be-next",
                    "Remove container evi-rotate",
                ],
                vec![],
            ),
            (
                "a worker successor and two probes",
                vec![
                    ("evi-worker-next", true),
                    ("evi-probe-be", true),
                    ("evi-probe", true),
                ],
                vec![
                    "Remove container evi-probe",
                    "Remove container evi-probe-be",
                    "Remove container evi-worker-next",
                ],
                vec![],
            ),
            (
                "someone else's containers under those names",
                vec![
                    ("evi-probe-mine", false),
                    ("evi-rotate", false),
                    ("evi-be-next", true),
                ],
                vec!["Remove container evi-be-next"],
                vec!["container evi-probe-mine", "container evi-rotate"],
            ),
            (
                "names that are not leftovers are not touched",
                vec![
                    ("evi-prob", true),
                    ("evi-state-next", true),
                    ("evi-be-old", true),
                ],
                vec![],
                vec![],
            ),
        ];
        let stack = [
            "Remove container evi-worker",
            "Remove container evi-be",
            "Remove container evi-state",
            "Remove container evi-state-addr",
            "Remove network evi-net",
        ];
        for (what, present, removed_first, expected_skipped) in cases {
            let mut o = converged(&d);
            for (name, owned) in present {
                o.containers.insert(name.into(), leftover(name, owned));
            }
            let (p, skipped) = plan_down(&o, "evi-net", "/s/valkey.conf", false);
            let expected: Vec<&str> = removed_first.iter().chain(&stack).copied().collect();
            assert_eq!(summary(&p), expected, "{what}");
            assert_eq!(skipped, expected_skipped, "{what}");
        }
    }

    #[test]
    fn with_systemd_the_boot_unit_is_enabled_like_any_resource() {
        let d = app();
        let mut o = converged(&d);
        assert!(
            !plan(&d, &o)
                .unwrap()
                .steps
                .iter()
                .any(|s| s.kind == Kind::Unit),
            "no systemd, no unit"
        );
        o.boot_unit_enabled = Some(false);
        assert_eq!(
            summary(&plan(&d, &o).unwrap()),
            ["Create unit podman-restart.service"]
        );
        o.boot_unit_enabled = Some(true);
        assert!(!plan(&d, &o).unwrap().has_changes());
    }

    #[test]
    fn secret_versions() {
        let owned = |name: &str| ObservedResource {
            name: name.into(),
            labels: owned_labels(),
        };
        let mut o = Observed::default();
        assert_eq!(secret_version_for(&o), SecretVersion(1));
        o.secrets = vec![owned("evi-valkey-url-v4")];
        assert_eq!(
            secret_version_for(&o),
            SecretVersion(5),
            "an incomplete pair is skipped"
        );
        o.secrets.push(owned("evi-state-password-v4"));
        assert_eq!(secret_version_for(&o), SecretVersion(4));
    }
}

//! `evi-install status`: what is on the host, whether it matches the
//! settings, and how evi-state is doing (memory, AOF, evictions, keys).

use anyhow::Result;
use serde::Serialize;

use super::{observe, Host};
use crate::cli::{OutputFormat, StatusArgs};
use crate::desired;
use crate::engine::Engine;
use crate::exit;
use crate::model::*;
use crate::plan::{check_ownership, plan, secret_version_for, PlanError};
use crate::reach::{probe, probe_by_exec, probe_spec, Attach, Reach};
use crate::render::valkey_conf;
use crate::settings::Settings;
use crate::ui::Ui;

mod health;
mod text;

use crate::size::human;
use health::{health, ValkeyHealth};
use text::text;

#[derive(Debug, Serialize)]
struct Resource {
    kind: Kind,
    name: String,
    /// `present`, `running`, `stopped`, `missing`, `foreign`.
    state: String,
    owned: bool,
    matches: bool,
    /// What differs from the settings, when it does not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<String>,
}

/// The seed guide's workers reclaim entries pending longer than this (XAUTOCLAIM).
const RECLAIM_WINDOW_MS: u64 = 60_000;

/// Whether a client can use evi-state, seen from inside its network namespace.
#[derive(Debug, Serialize)]
struct ClientReach {
    client: String,
    #[serde(flatten)]
    reach: Reach,
}

#[derive(Debug, Serialize)]
struct Report {
    format_version: &'static str,
    healthy: bool,
    resources: Vec<Resource>,
    /// One entry per running client.
    clients: Vec<ClientReach>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valkey: Option<ValkeyHealth>,
    /// What starts the containers after a reboot (`crate::boot::describe`).
    boot: String,
    warnings: Vec<String>,
}

pub async fn run(settings: &Settings, host: &Host, args: &StatusArgs, ui: &Ui) -> Result<u8> {
    let engine = host.connect().await?;
    let observed = observe(&engine, settings).await?;
    let conf = valkey_conf(settings)?;
    let mut warnings = Vec::new();
    let mut resources = resources(settings, &conf, &observed);

    let state_running = observed
        .containers
        .get(STATE_CONTAINER)
        .is_some_and(|c| c.running && c.owned());
    let valkey = if state_running {
        match health(&engine).await {
            Ok(h) => Some(h),
            Err(e) => {
                warnings.push(format!("cannot read evi-state's INFO: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    if let Some(h) = &valkey {
        if h.maxmemory > 0 && h.used_memory * 10 > h.maxmemory * 9 {
            warnings.push(format!(
                "evi-state uses {} of its {} limit: when memory is full of keys without a TTL every write fails \
                 with `OOM command not allowed`, XADD included",
                human(h.used_memory),
                human(h.maxmemory)
            ));
        }
        if h.oom_refusals > 0 {
            warnings.push(format!(
                "evi-state has refused {} writes with `OOM command not allowed` since it started: memory is full of \
                 keys without a TTL, so every write fails, XADD included; delete keys without a TTL or raise \
                 valkey.maxmemory",
                h.oom_refusals
            ));
        }
        if !h.aof_enabled && settings.valkey.appendonly {
            warnings.push("AOF is off although the settings turn it on".to_string());
        }
        if h.aof_last_rewrite_status != "ok" || h.aof_last_write_status != "ok" {
            warnings.push(format!(
                "the last AOF rewrite or write failed (rewrite: {}, write: {}); check the disk under the evi-state-data volume",
                h.aof_last_rewrite_status, h.aof_last_write_status
            ));
        }
        for st in &h.streams {
            for g in &st.groups {
                if let Some(idle) = g.oldest_pending_idle_ms.filter(|i| *i > RECLAIM_WINDOW_MS) {
                    warnings.push(format!(
                        "stream `{}` group `{}` has {} pending entries, the oldest waiting {}s, longer than the guide's \
                         60 s reclaim window: a worker may have died; a worker reclaims them with XAUTOCLAIM when it starts",
                        st.key,
                        g.name,
                        g.pending,
                        idle / 1000
                    ));
                }
            }
        }
        let want = crate::acl::describe(&crate::acl::client_rules(&settings.valkey.client_access));
        if let Some(u) = h
            .users
            .iter()
            .find(|u| u.name == crate::acl::CLIENT_USER && u.rules != want)
        {
            warnings.push(format!(
                "the clients' user `{}` has other rules than the settings give it (changed on the server, \
                 or new settings): `evi-install up` sets them in place, without a restart",
                u.name
            ));
        }
        if let Some(u) = h
            .users
            .iter()
            .find(|u| u.name == crate::acl::CLIENT_USER && u.passwords > 1)
        {
            warnings.push(format!(
                "evi-state accepts {} passwords for the clients' user `{}`: a rotation is unfinished; \
                 run `evi-install rotate-secret` to finish it",
                u.passwords, u.name
            ));
        }
        for key in &h.streams_with_ttl {
            warnings.push(format!(
                "stream `{key}` has a TTL: under volatile-* eviction it can be evicted with its queued tasks; `PERSIST {key}`"
            ));
        }
    }
    if crate::rotation::interrupted(&observed) {
        warnings.push(
            "a password rotation was interrupted (two generations of secrets, or its helper, are on the host); \
             run `evi-install rotate-secret` to finish it"
                .to_string(),
        );
    }
    if state_running {
        live_drift(&engine, &conf, &observed, &mut resources).await;
    }
    let clients = if state_running {
        client_reach(&engine, settings, &observed).await
    } else {
        vec![]
    };
    resources.sort_by_key(|r| (r.kind, r.name.clone()));
    let healthy = resources.iter().all(|r| r.matches)
        && warnings.is_empty()
        && clients.iter().all(|c| c.reach == Reach::Ok);
    let report = Report {
        format_version: "2",
        healthy,
        resources,
        clients,
        valkey,
        boot: crate::boot::describe_here(observed.boot_unit_enabled),
        warnings,
    };
    match args.output {
        OutputFormat::Json => ui.result(&serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => ui.result(&text(&report)),
    }
    Ok(if healthy { exit::OK } else { exit::ERROR })
}

/// Probes evi-state from inside each running client's network namespace
/// (its interfaces, routes and /etc/hosts), with the client's own URL secret.
async fn client_reach<E: Engine>(
    engine: &E,
    settings: &Settings,
    observed: &Observed,
) -> Vec<ClientReach> {
    // Every replica on the host, also one the settings no longer ask for:
    // evi-be, evi-be-2, ..., evi-worker, evi-worker-2, ...
    let mut clients: Vec<(&str, u32, &ObservedContainer)> = observed
        .containers
        .values()
        .filter(|c| c.running && c.owned())
        .filter_map(|c| replica_of(&c.name).map(|(service, r)| (service, r, c)))
        .collect();
    clients.sort_by_key(|(service, r, _)| (*service, *r));
    let clients: Vec<&ObservedContainer> = clients.into_iter().map(|(_, _, c)| c).collect();
    let probes = clients.iter().map(|c| async move {
        let reach = match c.secret_version() {
            None => Reach::Failed {
                layer: crate::reach::Layer::Other,
                detail: "no password generation label; run `evi-install up`".into(),
            },
            Some(version) => match probe_by_exec(engine, &c.name).await {
                Some(reach) => reach,
                // The client's image cannot run the probe: a probe container
                // in its network namespace, with the secret its label names.
                // Unique per run: two `status` at once must not share a probe.
                None => {
                    let name = format!("{PROBE_CONTAINER}-{}-{}", c.name, std::process::id());
                    let spec = probe_spec(
                        &name,
                        &settings.services.evi_state.image,
                        &version.url_name(),
                        Attach::Namespace(&c.name),
                    );
                    probe(engine, &spec)
                        .await
                        .unwrap_or_else(|e| Reach::Failed {
                            layer: crate::reach::Layer::Other,
                            detail: crate::secret::redact(&format!("{e:#}")),
                        })
                }
            },
        };
        ClientReach {
            client: c.name.clone(),
            reach,
        }
    });
    futures_util::future::join_all(probes).await
}

/// Every resource with its state and drift, from the same planner `up` uses.
/// A config file that differs in directives Valkey changes at run time says
/// nothing certain about the running server (the file may have been edited
/// by hand): ask the server. evi-state matches when it reports the settings'
/// values; otherwise the drift names the values it has.
async fn live_drift<E: crate::engine::Engine>(
    engine: &E,
    conf: &str,
    observed: &Observed,
    resources: &mut [Resource],
) {
    let Some(state) = resources
        .iter_mut()
        .find(|r| r.kind == Kind::Container && r.name == STATE_CONTAINER)
    else {
        return;
    };
    if !state
        .drift
        .as_deref()
        .is_some_and(|d| d.starts_with("in place:"))
    {
        return;
    }
    let changes = crate::live_config::live_changes(observed.config.as_deref(), conf);
    let script = crate::acl::admin_script(crate::live_config::READ_SCRIPT);
    let mut command = vec!["sh", "-c", script.as_str(), "config-get"];
    command.extend(changes.iter().map(|c| c.key.as_str()));
    let Ok(out) = engine.exec(STATE_CONTAINER, &command, &[]).await else {
        return;
    };
    let missing = crate::live_config::not_in_force(&changes, &out.stdout);
    if missing.is_empty() {
        state.matches = true;
        state.drift = None;
    } else {
        let keys: Vec<&str> = missing.iter().map(|c| c.key.as_str()).collect();
        state.drift = Some(format!(
            "running with other values than the settings for {} (`up` sets them in place, no restart)",
            keys.join(", ")
        ));
    }
}

fn resources(settings: &Settings, conf: &str, observed: &Observed) -> Vec<Resource> {
    let wanted = desired::build(settings, conf, secret_version_for(observed));
    let mut out = Vec::new();
    // Foreign resources are reported, and planning goes on without them.
    let mut observed = observed.clone();
    while let Err(PlanError::Foreign { kind, name }) = check_ownership(&wanted, &observed) {
        out.push(Resource {
            kind,
            name: name.clone(),
            state: "foreign".into(),
            owned: false,
            matches: false,
            drift: Some("not created by evi-install".into()),
        });
        match kind {
            Kind::Container => drop(observed.containers.remove(&name)),
            Kind::Network => observed.network = None,
            Kind::Volume => observed.volume = None,
            _ => observed.secrets.retain(|s| s.name != name),
        }
    }
    let Ok(the_plan) = plan(&wanted, &observed) else {
        return out;
    };
    for step in the_plan.steps {
        if out.iter().any(|r| r.name == step.name) {
            continue;
        }
        let container = observed
            .containers
            .get(&step.name)
            .filter(|_| step.kind == Kind::Container);
        let state = match (step.verb, container) {
            (Verb::Create, _) => "missing",
            (_, Some(c)) if c.running => "running",
            (_, Some(_)) => "stopped",
            _ => "present",
        };
        let matches = step.verb == Verb::Keep;
        let drift = (!matches).then(|| match step.verb {
            Verb::Create => "missing".to_string(),
            Verb::Remove => format!("not wanted: {}", step.reason),
            _ => step.reason.clone(),
        });
        out.push(Resource {
            kind: step.kind,
            name: step.name,
            state: state.into(),
            owned: state != "missing",
            matches,
            drift,
        });
    }
    out
}

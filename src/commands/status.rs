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
use crate::reach::{probe, probe_spec, Attach, Reach};
use crate::render::valkey_conf;
use crate::settings::Settings;
use crate::ui::Ui;

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

#[derive(Debug, Serialize, Default)]
struct ValkeyHealth {
    used_memory: u64,
    maxmemory: u64,
    aof_enabled: bool,
    aof_last_rewrite_status: String,
    aof_last_write_status: String,
    evicted_keys: u64,
    /// Writes refused with `OOM command not allowed` since the server started.
    oom_refusals: u64,
    keys_cache_db: u64,
    keys_op: u64,
    keys_stream: u64,
    keys_other: u64,
    /// All keys (DBSIZE).
    keys_total: u64,
    /// Above 100000 keys the namespace counts come from a random sample of this
    /// many keys, scaled to the total: estimates, and the output says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    keys_sampled: Option<u64>,
    streams_with_ttl: Vec<String>,
    /// The task queues (`stream:*`), at most 100.
    streams: Vec<StreamInfo>,
    /// evi-state's Valkey users (`acl.rs`), without their password hashes.
    users: Vec<crate::acl::User>,
}

#[derive(Debug, Serialize, Default, PartialEq)]
struct StreamInfo {
    key: String,
    length: u64,
    groups: Vec<GroupInfo>,
}

#[derive(Debug, Serialize, Default, PartialEq)]
struct GroupInfo {
    name: String,
    consumers: u64,
    /// Delivered to a consumer, not yet acknowledged.
    pending: u64,
    /// Entries not yet delivered to the group; unknown after some deletions.
    lag: Option<u64>,
    /// How long the oldest pending entry has waited since its last delivery.
    oldest_pending_idle_ms: Option<u64>,
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

/// INFO and key counts from inside evi-state; the password goes from the
/// mounted secret into valkey-cli's environment, never into arguments.
/// Run after `acl::ADMIN_CLI`, which defines `cli` as evi-install's own user.
const HEALTH_SCRIPT: &str = r##"cli INFO || exit 1
echo "# evi-keys"
# Keys per namespace: exact up to 100000 keys; above that a full SCAN would make status
# slow, so a random sample of 10000 keys (RANDOMKEY, in one pipeline) is counted and
# scaled to the total, and status says so.
total=$(cli DBSIZE)
count() { awk -v scale="$1" '/^cache:db:/{c++; next} /^op:/{o++; next} /^stream:/{s++; next} /./{x++} END{printf "keys_cache_db:%d\r\nkeys_op:%d\r\nkeys_stream:%d\r\nkeys_other:%d\r\n", c*scale, o*scale, s*scale, x*scale}'; }
if [ "$total" -le 100000 ]; then
  cli --scan | count 1
else
  i=0
  while [ $i -lt 10000 ]; do echo RANDOMKEY; i=$((i + 1)); done | cli | count "$(awk -v t="$total" 'BEGIN{print t / 10000}')"
  printf 'keys_sampled:10000\r\n'
fi
printf 'keys_total:%s\r\n' "$total"
# Each task queue (the first 100): length, consumer groups, pending entries, lag,
# and how long the oldest pending entry has waited (XPENDING's summary form).
cli --scan --pattern 'stream:*' | head -n 100 | while IFS= read -r key; do
  [ "$(cli TYPE "$key")" = stream ] || continue
  printf 'evi_stream:%s\r\nevi_stream_length:%s\r\n' "$key" "$(cli XLEN "$key")"
  [ "$(cli TTL "$key")" -ge 0 ] && printf 'stream_with_ttl:%s\r\n' "$key"
  cli XINFO GROUPS "$key" | awk 'NR % 2 == 1 { k = $0; next } { printf "%s=%s\n", k, $0 }' |
  while IFS= read -r field; do
    case "$field" in
      name=*) group=${field#name=}; printf 'evi_group:%s\r\n' "$group"
        idle=$(cli XPENDING "$key" "$group" - + 1 | sed -n 3p)
        printf 'evi_group_oldest_idle_ms:%s\r\n' "${idle:-}" ;;
      consumers=*|pending=*|lag=*) printf 'evi_group_%s:%s\r\n' "${field%%=*}" "${field#*=}" ;;
    esac
  done
done
"##;

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
        if let Some(u) = h
            .users
            .iter()
            .find(|u| u.name == "default" && u.passwords > 1)
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
            Some(version) => {
                // Unique per run: two `status` at once must not share a probe.
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

async fn health<E: Engine>(engine: &E) -> Result<ValkeyHealth> {
    let out = engine
        .exec(
            STATE_CONTAINER,
            &[
                "sh",
                "-c",
                &crate::acl::admin_script(&format!(
                    "{HEALTH_SCRIPT}\n{}",
                    crate::acl::USERS_SCRIPT
                )),
            ],
            &[],
        )
        .await?;
    if out.exit_code != 0 {
        anyhow::bail!("{}{}", out.stdout.trim(), out.stderr.trim());
    }
    Ok(parse_info(&out.stdout))
}

/// Reads the `key:value` lines of INFO (and of the key counts).
fn parse_info(text: &str) -> ValkeyHealth {
    let mut h = ValkeyHealth::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim_end_matches('\r').split_once(':') else {
            continue;
        };
        let num = || value.parse::<u64>().unwrap_or(0);
        match key {
            "evi_user" => h.users.extend(crate::acl::parse_user(value)),
            "used_memory" => h.used_memory = num(),
            "maxmemory" => h.maxmemory = num(),
            "aof_enabled" => h.aof_enabled = value == "1",
            "aof_last_bgrewrite_status" => h.aof_last_rewrite_status = value.to_string(),
            "aof_last_write_status" => h.aof_last_write_status = value.to_string(),
            "evicted_keys" => h.evicted_keys = num(),
            "errorstat_OOM" => {
                h.oom_refusals = value
                    .strip_prefix("count=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }
            "keys_cache_db" => h.keys_cache_db = num(),
            "keys_op" => h.keys_op = num(),
            "keys_stream" => h.keys_stream = num(),
            "keys_other" => h.keys_other = num(),
            "keys_total" => h.keys_total = num(),
            "keys_sampled" => h.keys_sampled = Some(num()),
            "stream_with_ttl" => h.streams_with_ttl.push(value.to_string()),
            "evi_stream" => h.streams.push(StreamInfo {
                key: value.to_string(),
                ..StreamInfo::default()
            }),
            "evi_stream_length" => {
                if let Some(st) = h.streams.last_mut() {
                    st.length = num();
                }
            }
            _ if key.starts_with("evi_group") => {
                let Some(st) = h.streams.last_mut() else {
                    continue;
                };
                if key == "evi_group" {
                    st.groups.push(GroupInfo {
                        name: value.to_string(),
                        ..GroupInfo::default()
                    });
                    continue;
                }
                let Some(g) = st.groups.last_mut() else {
                    continue;
                };
                match key {
                    "evi_group_consumers" => g.consumers = num(),
                    "evi_group_pending" => g.pending = num(),
                    "evi_group_lag" => g.lag = value.parse().ok(),
                    "evi_group_oldest_idle_ms" => g.oldest_pending_idle_ms = value.parse().ok(),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    h
}

/// Bytes for people: `812.3 KiB`, `1.0 GiB`.
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn text(report: &Report) -> String {
    let mut out = String::from("Resources:\n");
    for r in &report.resources {
        let verdict = match &r.drift {
            None => "matches".to_string(),
            Some(d) => format!("differs: {d}"),
        };
        out.push_str(&format!(
            "  {:<9} {:<46} {:<8} {verdict}\n",
            r.kind.as_str(),
            r.name,
            r.state
        ));
    }
    out.push_str(&format!("\nboot: {}\n", report.boot));
    if let Some(h) = &report.valkey {
        let percent = (h.used_memory * 100).checked_div(h.maxmemory).unwrap_or(0);
        out.push_str("\nevi-state:\n");
        out.push_str(&format!(
            "  memory   {} used of {} ({percent}%)\n",
            human(h.used_memory),
            human(h.maxmemory)
        ));
        out.push_str(&format!(
            "  AOF      {}, last rewrite {}, last write {}\n",
            if h.aof_enabled { "on" } else { "off" },
            h.aof_last_rewrite_status,
            h.aof_last_write_status
        ));
        out.push_str(&format!("  evicted  {} keys\n", h.evicted_keys));
        let estimate = match h.keys_sampled {
            Some(n) => format!(
                " (estimated from a random sample of {n} of {} keys)",
                h.keys_total
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "  keys     cache:db: {}, op: {}, stream: {}, other: {}{estimate}\n",
            h.keys_cache_db, h.keys_op, h.keys_stream, h.keys_other
        ));
        for u in &h.users {
            out.push_str(&format!(
                "  user     {} ({}, {} password{}): {}\n",
                u.name,
                if u.enabled { "on" } else { "off" },
                u.passwords,
                if u.passwords == 1 { "" } else { "s" },
                u.rules
            ));
        }
        for st in &h.streams {
            out.push_str(&format!("  queue    {}: {} entries", st.key, st.length));
            if st.groups.is_empty() {
                out.push_str(", no consumer group");
            }
            for g in &st.groups {
                let lag = g.lag.map_or("unknown".to_string(), |l| l.to_string());
                let oldest = g
                    .oldest_pending_idle_ms
                    .map(|ms| format!(" (oldest waiting {:.1}s)", ms as f64 / 1000.0))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "; group {}: {} consumers, {} pending{oldest}, lag {lag}",
                    g.name, g.consumers, g.pending
                ));
            }
            out.push('\n');
        }
    }
    if !report.clients.is_empty() {
        out.push_str("\nClients (probed from inside each client's network namespace):\n");
        let width = report
            .clients
            .iter()
            .map(|c| c.client.len())
            .max()
            .unwrap_or(0)
            .max(10);
        for c in &report.clients {
            let verdict = match &c.reach {
                Reach::Ok => {
                    "reaches evi-state: PONG with its VALKEY_URL, as the user it names (ACL WHOAMI)"
                        .to_string()
                }
                Reach::Failed { layer, detail } => {
                    format!(
                        "CANNOT reach evi-state: {layer} failed: {detail}; {}",
                        layer.fix()
                    )
                }
            };
            out.push_str(&format!("  {:<width$} {verdict}\n", c.client));
        }
    }
    for w in &report.warnings {
        out.push_str(&format!("\nwarning: {w}"));
    }
    if !report.warnings.is_empty() {
        out.push('\n');
    }
    out.push_str(if report.healthy {
        "\nStatus: healthy. The host matches the settings."
    } else {
        "\nStatus: degraded or drifted. Run `evi-install up --dry-run` to see what `up` would change."
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_are_parsed() {
        let h = parse_info(
            "# Memory\r\nused_memory:1048576\r\nmaxmemory:1073741824\r\naof_enabled:1\r\naof_last_bgrewrite_status:ok\r\n\
             evicted_keys:3\r\nerrorstat_OOM:count=7\r\n# evi-keys\r\nkeys_stream:2\r\nstream_with_ttl:stream:tasks:x\r\n",
        );
        assert_eq!(
            (h.used_memory, h.maxmemory, h.aof_enabled, h.evicted_keys),
            (1 << 20, 1 << 30, true, 3)
        );
        assert_eq!(h.oom_refusals, 7);
        assert_eq!(h.keys_sampled, None);
        let sampled =
            parse_info("keys_cache_db:500000\r\nkeys_sampled:10000\r\nkeys_total:2000000\r\n");
        assert_eq!(
            (
                sampled.keys_cache_db,
                sampled.keys_sampled,
                sampled.keys_total
            ),
            (500000, Some(10000), 2000000)
        );
        assert_eq!(h.aof_last_rewrite_status, "ok");
        assert_eq!(h.keys_stream, 2);
        assert_eq!(h.streams_with_ttl, ["stream:tasks:x"]);
    }

    #[test]
    fn queues_are_parsed_per_stream_and_group() {
        let h = parse_info(
            "keys_stream:2\r\nevi_stream:stream:tasks:email\r\nevi_stream_length:42\r\n\
             evi_group:workers\r\nevi_group_oldest_idle_ms:61000\r\nevi_group_consumers:2\r\n\
             evi_group_pending:3\r\nevi_group_lag:0\r\n\
             evi_group:audit\r\nevi_group_oldest_idle_ms:\r\nevi_group_consumers:0\r\n\
             evi_group_pending:0\r\nevi_group_lag:\r\n\
             evi_stream:stream:tasks:sms\r\nevi_stream_length:0\r\n",
        );
        assert_eq!(
            h.streams,
            [
                StreamInfo {
                    key: "stream:tasks:email".into(),
                    length: 42,
                    groups: vec![
                        GroupInfo {
                            name: "workers".into(),
                            consumers: 2,
                            pending: 3,
                            lag: Some(0),
                            oldest_pending_idle_ms: Some(61000),
                        },
                        GroupInfo {
                            name: "audit".into(),
                            ..GroupInfo::default()
                        },
                    ],
                },
                StreamInfo {
                    key: "stream:tasks:sms".into(),
                    ..StreamInfo::default()
                },
            ]
        );
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1 << 30), "1.0 GiB");
        assert_eq!(human(836_560), "817.0 KiB");
    }
}
